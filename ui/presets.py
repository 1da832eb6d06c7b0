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
from liveanim.motion.dials import DIALS, DIALS_BY_NAME, GROUPS, MOTION_DIM

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
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
    intensity: dict[str, float] = field(default_factory=lambda: {g: 1.0 for g in GROUPS})

    def to_json(self) -> dict:
        dials = {LABELLED[i]: float(v) for i, v in enumerate(self.offsets) if i in LABELLED and v != 0}
        directions = {str(i): float(v) for i, v in enumerate(self.offsets) if i not in LABELLED and v != 0}
        return {"version": FORMAT_VERSION, "dials": dials, "directions": directions,
                "intensity": dict(self.intensity)}

    @classmethod
    def from_json(cls, data: dict) -> Preset:
        """Inverse of `to_json`; raises KeyError/ValueError/TypeError on a malformed document."""
        offsets = np.zeros(MOTION_DIM, dtype=np.float32)
        for name, value in data.get("dials", {}).items():
            offsets[DIALS_BY_NAME[name].index] = float(value)
        for index, value in data.get("directions", {}).items():
            offsets[int(index)] = float(value)
        intensity = {g: float(data.get("intensity", {}).get(g, 1.0)) for g in GROUPS}
        return cls(offsets=offsets, intensity=intensity)


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
        path = self._path(name)
        try:
            return Preset.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise PresetError(f"There is no preset {name!r} (looked for {path}).") from None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            raise PresetError(f"The preset file {path} is damaged ({error}); delete it or fix it "
                              "by hand.") from error

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
        log.info("deleted preset %r", name)

    def _path(self, name: str) -> Path:
        name = name.strip()
        if not NAME_PATTERN.match(name):
            raise PresetError(f"{name!r} cannot be a preset name: use up to 64 letters, digits, "
                              "spaces, '-', '_', '.' or brackets, starting with a letter or digit.")
        return self.directory / f"{name}.json"
