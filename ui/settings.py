"""What the app remembers between runs, stored with QSettings under typed names.

Only this module knows the keys; the window reads and writes plain Python values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PyQt6.QtCore import QByteArray, QSettings

from liveanim.motion.controller import MotionConfig
from liveanim.motion.dials import GROUPS, MOTION_DIM

ORGANIZATION = "LiveAnim"
APPLICATION = "LiveAnim"


class AppSettings:
    """Typed access to the persisted settings.

    store: a QSettings to use (tests pass one backed by a temporary file); by default the
           platform's usual place for LiveAnim.
    """

    def __init__(self, store: QSettings | None = None) -> None:
        self._store = store if store is not None else QSettings(ORGANIZATION, APPLICATION)

    @classmethod
    def at(cls, path: Path) -> AppSettings:
        """Settings kept in one INI file, e.g. for tests or a portable install."""
        return cls(QSettings(str(path), QSettings.Format.IniFormat))

    def sync(self) -> None:
        self._store.sync()

    def _get(self, key: str, default: object, kind: type) -> object:
        return self._store.value(key, default, type=kind)

    @property
    def geometry(self) -> QByteArray:
        return self._get("window/geometry", QByteArray(), QByteArray)

    @geometry.setter
    def geometry(self, value: QByteArray) -> None:
        self._store.setValue("window/geometry", value)

    @property
    def window_state(self) -> QByteArray:
        return self._get("window/state", QByteArray(), QByteArray)

    @window_state.setter
    def window_state(self, value: QByteArray) -> None:
        self._store.setValue("window/state", value)

    @property
    def source(self) -> str:
        """The last input: 'camera:<index>' or 'file:<path>' ('' before the first choice)."""
        return self._get("input/source", "", str)

    @source.setter
    def source(self, value: str) -> None:
        self._store.setValue("input/source", value)

    @property
    def avatars(self) -> list[str]:
        """Paths of the portrait files in the gallery, in order."""
        return [p for p in self._get("avatars/paths", [], list) if p]

    @avatars.setter
    def avatars(self, paths: list[str]) -> None:
        self._store.setValue("avatars/paths", list(paths))

    @property
    def avatars_initialized(self) -> bool:
        """Whether the gallery was saved once (so an empty one is the user's choice)."""
        return self._store.contains("avatars/paths")

    @property
    def current_avatar(self) -> int:
        return self._get("avatars/current", 0, int)

    @current_avatar.setter
    def current_avatar(self, index: int) -> None:
        self._store.setValue("avatars/current", index)

    @property
    def offsets(self) -> np.ndarray:
        """(40,) float32 dial offsets; zeros when none were saved or the saved list is damaged."""
        values = self._get("dials/offsets", [], list)
        try:
            offsets = np.asarray([float(v) for v in values], dtype=np.float32)
        except (TypeError, ValueError):
            offsets = np.zeros(0, dtype=np.float32)
        return offsets if offsets.shape == (MOTION_DIM,) else np.zeros(MOTION_DIM, dtype=np.float32)

    @offsets.setter
    def offsets(self, values: np.ndarray) -> None:
        self._store.setValue("dials/offsets", [float(v) for v in values])

    @property
    def intensity(self) -> dict[str, float]:
        return {g: self._get(f"dials/intensity_{g}", 1.0, float) for g in GROUPS}

    @intensity.setter
    def intensity(self, values: dict[str, float]) -> None:
        for group, value in values.items():
            self._store.setValue(f"dials/intensity_{group}", float(value))

    @property
    def smoothing(self) -> float:
        return self._get("dials/smoothing", MotionConfig.smoothing, float)

    @smoothing.setter
    def smoothing(self, value: float) -> None:
        self._store.setValue("dials/smoothing", float(value))

    @property
    def backend(self) -> str:
        return self._get("engine/backend", "auto", str)

    @backend.setter
    def backend(self, value: str) -> None:
        self._store.setValue("engine/backend", value)

    @property
    def precision(self) -> str:
        return self._get("engine/precision", "auto", str)

    @precision.setter
    def precision(self, value: str) -> None:
        self._store.setValue("engine/precision", value)

    @property
    def weights(self) -> Path | None:
        """A weights file the user picked by hand; None means the cache (or a download)."""
        value = self._get("engine/weights", "", str)
        return Path(value) if value else None

    @weights.setter
    def weights(self, path: Path | None) -> None:
        self._store.setValue("engine/weights", "" if path is None else str(path))
