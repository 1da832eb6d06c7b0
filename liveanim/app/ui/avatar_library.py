"""The portraits the person added, kept apart from any live session.

A `LiveSession` is started once; a new engine or input means a new session. The library
keeps the pictures and their crops (the gallery shows them) so that a session for a new engine
can be filled from it, in the same order, without looking for the faces again; a new input on the
same engine gets the last session's encoded avatars (the controller's AvatarBank) as they are.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liveanim.errors import UsageError
from liveanim.face import CropBox
from liveanim.pipeline.avatars import AvatarConfig, crop_avatar, default_avatar
from liveanim.pipeline.video import read_image

DEFAULT_AVATAR = "builtin:astronaut"


@dataclass(frozen=True, eq=False)
class AvatarEntry:
    """One portrait.

    name:   what the gallery shows.
    image:  the whole picture, uint8 RGB.
    crop:   the 512x512 crop the model animates.
    box:    where in `image` the crop was taken (a session is handed both: no second face detection).
    origin: the file it came from, or DEFAULT_AVATAR (what the settings remember).
    """

    name: str
    image: np.ndarray
    crop: np.ndarray
    box: CropBox
    origin: str


def load_avatar(origin: str, config: AvatarConfig) -> AvatarEntry:
    """Read and crop a portrait (slow: face detection); a file without a face is a NoFaceError."""
    if origin == DEFAULT_AVATAR:
        image, name = default_avatar()
    else:
        image, name = read_image(Path(origin)), Path(origin).stem
    return AvatarEntry(name, image, *crop_avatar(image, name, config), origin)


class AvatarLibrary:
    """The portraits in gallery order and the one shown; safe to use from any thread."""

    def __init__(self) -> None:
        self._entries: list[AvatarEntry] = []
        self._selected = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def entries(self) -> list[AvatarEntry]:
        with self._lock:
            return list(self._entries)

    @property
    def selected(self) -> int:
        return self._selected

    def append(self, entry: AvatarEntry) -> int:
        with self._lock:
            self._entries.append(entry)
            return len(self._entries) - 1

    def check_removable(self) -> None:
        with self._lock:
            if len(self._entries) <= 1:
                raise UsageError("The last avatar cannot be removed: add another one first.")

    def remove(self, index: int) -> int:
        """Forget avatar `index`; the index shown afterwards."""
        with self._lock:
            del self._entries[index]
            if self._selected > index or self._selected == len(self._entries):
                self._selected -= 1
            return self._selected

    def select(self, index: int) -> bool:
        """Show avatar `index`; False if there is none."""
        with self._lock:
            if not 0 <= index < len(self._entries):
                return False
            self._selected = index
            return True
