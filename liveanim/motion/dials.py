"""The labelled directions of LIA-X's Sparse Motion Dictionary, and edit vectors built from them.

An edit vector `e` (40 numbers) is added to the source's motion code before rendering:
`z_target = z_s + (a_d - a_0 + a_s + e) @ Q.T`. The 14 dials below are the directions the
LIA-X authors labelled; every other index is a raw, unlabelled direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

MOTION_DIM = 40


@dataclass(frozen=True)
class Dial:
    """One labelled dictionary direction.

    name:  the name used on the command line and in presets.
    index: the dictionary column it moves.
    group: 'head', 'mouth' or 'eyes': the per-group intensity that scales it.
    label: what a person sees in the UI.
    """

    name: str
    index: int
    group: str
    label: str


DIALS: tuple[Dial, ...] = (
    Dial("yaw1", 37, "head", "Yaw (head only)"),
    Dial("yaw2", 39, "head", "Yaw (head + shoulders)"),
    Dial("pitch", 28, "head", "Pitch"),
    Dial("roll1", 15, "head", "Roll 1"),
    Dial("roll2", 33, "head", "Roll 2"),
    Dial("neck", 31, "head", "Neck left/right"),
    Dial("pout", 6, "mouth", "Pout"),
    Dial("mouth", 25, "mouth", "Mouth open/close, wide smile"),
    Dial("o_mouth", 16, "mouth", "\"O\" mouth"),
    Dial("smirk", 19, "mouth", "Apple cheek / smirk"),
    Dial("eyes", 13, "eyes", "Eyes close/open"),
    Dial("eyebrows", 24, "eyes", "Raise/frown eyebrows"),
    Dial("eyeballs1", 17, "eyes", "Eyeballs 1"),
    Dial("eyeballs2", 26, "eyes", "Eyeballs 2"),
)
DIALS_BY_NAME: dict[str, Dial] = {dial.name: dial for dial in DIALS}
GROUPS: tuple[str, ...] = ("head", "mouth", "eyes")


def edit_vector(
    dials: Mapping[str, float] | None = None,
    directions: Mapping[int, float] | None = None,
    motion_dim: int = MOTION_DIM,
) -> np.ndarray:
    """The (motion_dim,) float32 offset vector for named dials plus raw directions.

    dials:      {dial name: offset}, e.g. {"yaw1": 0.2}.
    directions: {dictionary index: offset}; added on top of the dials.
    motion_dim: length of the motion code (40 for the released model).
    """
    edit = np.zeros(motion_dim, dtype=np.float32)
    for name, value in (dials or {}).items():
        edit[dial(name).index] += value
    for index, value in (directions or {}).items():
        if not 0 <= index < motion_dim:
            raise ValueError(f"direction {index} is out of range: the dictionary has indices 0..{motion_dim - 1}")
        edit[index] += value
    return edit


def dial(name: str) -> Dial:
    """The dial called `name`, or a ValueError that lists the valid names."""
    try:
        return DIALS_BY_NAME[name]
    except KeyError:
        names = ", ".join(DIALS_BY_NAME)
        raise ValueError(f"unknown dial {name!r}; the dials are: {names}") from None


def parse_assignments(items: Iterable[str], key_type: type = str) -> dict:
    """Parse command-line `key=value` items ('yaw1=0.2', '5=-0.1') into a dict."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} should look like name=value, e.g. yaw1=0.2")
        try:
            parsed[key_type(key.strip())] = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: {value!r} is not a number") from None
    return parsed


def group_scale(intensity: Mapping[str, float], motion_dim: int = MOTION_DIM) -> np.ndarray:
    """A (motion_dim,) per-direction factor from per-group intensities {'head': 1.0, ...}.

    Directions that belong to no labelled group keep a factor of 1.
    """
    scale = np.ones(motion_dim, dtype=np.float32)
    for group, value in intensity.items():
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; the groups are: {', '.join(GROUPS)}")
        for d in DIALS:
            if d.group == group:
                scale[d.index] = value
    return scale
