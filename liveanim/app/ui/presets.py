"""Named dial presets, one JSON file each in the user's configuration folder.

A preset keeps the offsets of the 40 dictionary directions (labelled ones by name, so a
person can read and hand-edit the file) and the per-group intensities.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QStandardPaths

from liveanim.errors import LiveAnimError
from liveanim.motion.dials import DIALS, check_intensity, direction_index, edit_vector, full_intensity

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KEYS = ("dials", "directions", "intensity")
MAX_BYTES = 64 * 1024  # a preset is a few hundred bytes; refuse to parse anything huge
NAME_PATTERN = re.compile(r"^[\w][\w \-.()]{0,63}$")
LABELLED = {d.index: d.name for d in DIALS}


class PresetError(LiveAnimError):
    """A preset cannot be saved or read (bad name, missing or damaged file)."""


@dataclass(frozen=True)
class Preset:
    """Dial state worth keeping.

    offsets:   (40,) float32 offset of every dictionary direction.
    intensity: {'head' | 'mouth' | 'eyes': factor}.
    """

    offsets: np.ndarray
    intensity: dict[str, float] = field(default_factory=full_intensity)

    def to_json(self) -> dict:
        dials = {LABELLED[i]: float(v) for i, v in enumerate(self.offsets) if i in LABELLED and v != 0}
        directions = {str(i): float(v) for i, v in enumerate(self.offsets) if i not in LABELLED and v != 0}
        return {"version": FORMAT_VERSION, "dials": dials, "directions": directions,
                "intensity": dict(self.intensity)}

    @classmethod
    def from_json(cls, data: object) -> Preset:
        """Inverse of `to_json`. Anything else is a ValueError saying what is wrong: the
        document's shape, or a value the motion limits refuse (a NaN, an unknown direction)."""
        if not isinstance(data, dict):
            raise ValueError(f"it holds {_kind(data)}, not an object with {', '.join(map(repr, KEYS))}")
        unknown = sorted(set(data) - {"version", *KEYS})
        if unknown:
            raise ValueError(f"it has the unknown key {unknown[0]!r}; a preset has {', '.join(map(repr, KEYS))}")
        if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"it is of version {data['version']!r}; this LiveAnim reads version {FORMAT_VERSION}")
        dials, directions, intensity = (_section(data, key) for key in KEYS)
        offsets = edit_vector(dials, {direction_index(key): value for key, value in directions.items()})
        return cls(offsets=offsets, intensity=check_intensity({**full_intensity(), **intensity}))


def _section(data: dict, key: str) -> dict:
    """One of the preset's objects ({} when absent)."""
    section = data.get(key, {})
    if not isinstance(section, dict):
        raise ValueError(f"{key!r} holds {_kind(section)}, not an object of names and numbers")
    return section


def _kind(value: object) -> str:
    """'a list', 'a string'...: what a JSON value is, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(type(value), "a number")


def default_presets_dir() -> Path:
    """<the platform's per-user config folder for this app>/presets."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppConfigLocation)
    return Path(base) / "presets"


class PresetStore:
    """Save, load, list and delete presets in one folder (created on first save)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted((p.stem for p in self.directory.glob("*.json")), key=str.casefold)

    def save(self, name: str, preset: Preset) -> Path:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(preset.to_json(), indent=2), encoding="utf-8")
        except OSError as error:
            raise PresetError(f"Cannot save preset {name!r} to {path}: {error.strerror}. "
                              "Check that the folder is writable.") from error
        log.info("saved preset %r to %s", name, path)
        return path

    def load(self, name: str) -> Preset:
        """The preset in `name`'s file; any problem with the file is a PresetError naming it."""
        path = self._path(name)
        try:
            return Preset.from_json(_parse(_read_small(path)))
        except FileNotFoundError:
            raise PresetError(f"There is no preset {name!r} (looked for {path}).") from None
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise PresetError(f"The preset file {path} cannot be used: {reason}. Nothing was changed; "
                              "delete the file or fix it by hand.") from error

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
        log.info("deleted preset %r", name)

    def _path(self, name: str) -> Path:
        name = name.strip()
        if not NAME_PATTERN.match(name):
            raise PresetError(f"{name!r} cannot be a preset name: use up to 64 letters, digits, "
                              "spaces, '-', '_', '.' or brackets, starting with a letter or digit.")
        return self.directory / f"{name}.json"


def _parse(text: str) -> object:
    """The JSON document in `text`; a ValueError also when it is nested too deeply to read."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("its JSON is nested too deeply") from None


def _read_small(path: Path) -> str:
    """The text of a file that should be small, or a ValueError when it is not."""
    with path.open("rb") as file:
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"it is larger than {MAX_BYTES // 1024} KiB, too large for a preset")
    return data.decode("utf-8")
