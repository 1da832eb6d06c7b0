"""What the app remembers between runs, stored with QSettings under typed names.

Only this module knows the keys; the window reads and writes plain Python values. A saved
value that cannot be used (hand-edited, from another version, or a NaN) is replaced by its
default with a warning, by the same motion limits that the command line and presets obey.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from PyQt6.QtCore import QByteArray, QSettings

from liveanim.engines import ENGINE_CHOICES, PRECISIONS, EngineConfig
from liveanim.motion.controller import MotionConfig
from liveanim.motion.dials import FOLLOW, GROUPS, MOTION_DIM, check_offsets
from liveanim.motion.limits import LIMITS

log = logging.getLogger(__name__)

T = TypeVar("T")

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

    def _checked(self, key: str, default: T, convert: Callable[[object], T]) -> T:
        """The saved value through `convert`; the default, with a warning, when it raises."""
        if not self._store.contains(key):
            return default
        value = self._store.value(key)
        try:
            return convert(value)
        except (TypeError, ValueError) as error:
            log.warning("Ignoring the saved setting %s=%r (%s); using %r instead", key, value, error, default)
            return default

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
        return self._checked("avatars/current", 0, _index)

    @current_avatar.setter
    def current_avatar(self, index: int) -> None:
        self._store.setValue("avatars/current", index)

    @property
    def offsets(self) -> np.ndarray:
        """(40,) float32 dial offsets; zeros when none were saved or the saved list is unusable."""
        return self._checked("dials/offsets", np.zeros(MOTION_DIM, dtype=np.float32),
                             lambda values: check_offsets([_number(v) for v in _listed(values)]))

    @offsets.setter
    def offsets(self, values: np.ndarray) -> None:
        self._store.setValue("dials/offsets", [float(v) for v in values])

    @property
    def intensity(self) -> dict[str, float]:
        return {g: self._checked(f"dials/intensity_{g}", FOLLOW,
                                 lambda v, g=g: LIMITS.intensity.check(_number(v), f"the {g} intensity"))
                for g in GROUPS}

    @intensity.setter
    def intensity(self, values: dict[str, float]) -> None:
        for group, value in values.items():
            self._store.setValue(f"dials/intensity_{group}", float(value))

    @property
    def smoothing(self) -> float:
        return self._checked("dials/smoothing", MotionConfig.smoothing,
                             lambda v: LIMITS.smoothing.check(_number(v), "the smoothing"))

    @smoothing.setter
    def smoothing(self, value: float) -> None:
        self._store.setValue("dials/smoothing", float(value))

    @property
    def backend(self) -> str:
        return self._checked("engine/backend", EngineConfig.backend, lambda v: _one_of(v, ENGINE_CHOICES))

    @backend.setter
    def backend(self, value: str) -> None:
        self._store.setValue("engine/backend", value)

    @property
    def precision(self) -> str:
        return self._checked("engine/precision", EngineConfig.precision, lambda v: _one_of(v, PRECISIONS))

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


def _number(value: object) -> float:
    """A number as QSettings gives it back: a float, or its text from an INI file."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def _listed(value: object) -> list:
    """A saved list; an INI file gives a list of one item back as that item."""
    return value if isinstance(value, list) else [value]


def _index(value: object) -> int:
    """A non-negative whole number, from an int or its text."""
    index = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else -1
    if index < 0:
        raise ValueError(f"{value!r} is not an index")
    return index


def _one_of(value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"not one of {', '.join(choices)}")
    return value
