"""The labelled directions of LIA-X's Sparse Motion Dictionary, and edit vectors built from them.

An edit vector `e` (40 numbers) is added to the source's motion code before rendering:
`z_target = z_s + (a_d - a_0 + a_s + e) @ Q.T`. The 14 dials below are the directions the
LIA-X authors labelled; every other index is a raw, unlabelled direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from liveanim.motion.limits import LIMITS

MOTION_DIM = 40  # the dictionary's size; the model's too (liveanim/model/liax.py reads it here)


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
DIALS_BY_INDEX: dict[int, Dial] = {dial.index: dial for dial in DIALS}
GROUPS: tuple[str, ...] = ("head", "mouth", "eyes")
FOLLOW = 1.0  # a group's default intensity: the avatar follows the performer as performed


def full_intensity() -> dict[str, float]:
    """Every group at its default intensity, as a fresh dict the caller may change."""
    return {group: FOLLOW for group in GROUPS}


def edit_vector(
    dials: Mapping[str, float] | None = None,
    directions: Mapping[int, float] | None = None,
    motion_dim: int = MOTION_DIM,
) -> np.ndarray:
    """The (motion_dim,) float32 offset vector for named dials plus raw directions.

    dials:      {dial name: offset}, e.g. {"yaw1": 0.2}.
    directions: {dictionary index: offset}; added on top of the dials.
    motion_dim: length of the motion code (40 for the released model).

    Every offset, and every sum of a dial and a raw direction on the same index, must keep
    to `LIMITS.offset`; a ValueError names the first that does not.
    """
    edit = np.zeros(motion_dim, dtype=np.float64)
    for name, value in (dials or {}).items():
        edit[dial(name).index] += LIMITS.offset.check(value, f"dial {name!r}")
    for index, value in (directions or {}).items():
        if not 0 <= index < motion_dim:
            raise ValueError(f"direction {index} is out of range: the dictionary has indices 0..{motion_dim - 1}")
        edit[index] += LIMITS.offset.check(value, f"direction {index}")
    return check_offsets(edit)


def check_offsets(offsets: Sequence[float] | np.ndarray, motion_dim: int = MOTION_DIM) -> np.ndarray:
    """A float32 copy of an edit vector whose every entry keeps to `LIMITS.offset`, or a
    ValueError naming the first entry that does not (by its dial name when it has one)."""
    values = np.asarray(offsets)
    if values.shape != (motion_dim,):
        raise ValueError(f"an edit needs {motion_dim} offsets, got an array of shape {values.shape}")
    for index, value in enumerate(values.tolist()):
        LIMITS.offset.check(value, _direction_name(index))
    return values.astype(np.float32)


def check_intensity(intensity: Mapping[str, float]) -> dict[str, float]:
    """Per-group intensities of known groups, each within `LIMITS.intensity`; else a ValueError."""
    checked = {}
    for group, value in intensity.items():
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; the groups are: {', '.join(GROUPS)}")
        checked[group] = LIMITS.intensity.check(value, f"the {group} intensity")
    return checked


def direction_index(text: str, motion_dim: int = MOTION_DIM) -> int:
    """A dictionary index written as digits ('5'), as preset files and `--direction` give it."""
    if not re.fullmatch(r"[0-9]{1,3}", text) or not int(text) < motion_dim:
        raise ValueError(f"{text!r} is no direction: directions are the numbers 0..{motion_dim - 1}")
    return int(text)


def _direction_name(index: int) -> str:
    """'dial 'yaw1' (direction 37)' for a labelled index, 'direction 5' for another."""
    labelled = DIALS_BY_INDEX.get(index)
    return f"dial {labelled.name!r} (direction {index})" if labelled else f"direction {index}"


def dial(name: str) -> Dial:
    """The dial called `name`, or a ValueError that lists the valid names."""
    try:
        return DIALS_BY_NAME[name]
    except KeyError:
        names = ", ".join(DIALS_BY_NAME)
        raise ValueError(f"unknown dial {name!r}; the dials are: {names}") from None


def parse_assignments(items: Iterable[str], key_type: Callable[[str], object] = str) -> dict:
    """Parse command-line `key=value` items ('yaw1=0.2', '5=-0.1') into a dict.

    key_type: turns the text before '=' into a key (e.g. `direction_index`), or raises ValueError.
    """
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} should look like name=value, e.g. yaw1=0.2")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: {value!r} is not a number") from None
        parsed[key_type(key.strip())] = number
    return parsed


def group_scale(intensity: Mapping[str, float], motion_dim: int = MOTION_DIM) -> np.ndarray:
    """A (motion_dim,) per-direction factor from per-group intensities {'head': 1.0, ...}.

    Directions that belong to no labelled group keep a factor of 1.
    """
    scale = np.ones(motion_dim, dtype=np.float32)
    for group, value in check_intensity(intensity).items():
        for d in DIALS:
            if d.group == group:
                scale[d.index] = value
    return scale
