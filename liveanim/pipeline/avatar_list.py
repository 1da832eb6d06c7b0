"""The portraits the person chose, in order, and the one shown: the single owner of every rule
about them, for the command line's session and the window alike.

A window opens a new `LiveSession` for each engine and each input; the list outlives them all.
Each session reads the shown portrait from it every frame (a switch is a pointer change, seen
at the next frame) and takes the encodings the list keeps per engine, so neither a new input
nor a return to the engine used before encodes a portrait again.
"""

from __future__ import annotations

import logging
import threading

from liveanim.errors import UsageError
from liveanim.pipeline.animator import Animator, Avatar
from liveanim.pipeline.avatars import AvatarBank, Portrait

log = logging.getLogger(__name__)


class AvatarList:
    """The portraits in order, the one shown, and their encodings; safe to use from any thread.

    encodings: the cache of their encodings per engine (by default one keeping two engines).
    """

    def __init__(self, encodings: AvatarBank | None = None) -> None:
        self._portraits: list[Portrait] = []
        self._selected = 0
        self._encodings = encodings if encodings is not None else AvatarBank()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._portraits)

    @property
    def portraits(self) -> list[Portrait]:
        with self._lock:
            return list(self._portraits)

    @property
    def selected(self) -> int:
        return self._selected

    def current(self) -> Portrait:
        """The portrait shown."""
        with self._lock:
            if not self._portraits:
                raise UsageError("There is no avatar yet: add one first.")
            return self._portraits[self._selected]

    def add(self, portrait: Portrait) -> int:
        """Append a portrait (the one shown stays); its index."""
        with self._lock:
            self._portraits.append(portrait)
            return len(self._portraits) - 1

    def remove(self, index: int) -> int:
        """Forget avatar `index` (its encodings are freed unless another avatar has the same crop);
        the index shown afterwards: the same avatar, or the one before the removed one where that
        was shown. The last avatar cannot be removed."""
        with self._lock:
            self._check(index)
            if len(self._portraits) == 1:
                raise UsageError("The last avatar cannot be removed: add another one first.")
            removed = self._portraits.pop(index)
            if self._selected > index or self._selected == len(self._portraits):
                self._selected -= 1
            shared = any(portrait.digest == removed.digest for portrait in self._portraits)
            selected = self._selected
        if not shared:
            self._encodings.forget(removed.digest)
        return selected

    def select(self, index: int) -> None:
        """Show avatar `index` (from the next frame on)."""
        with self._lock:
            self._check(index)
            self._selected = index
            name = self._portraits[index].name
        log.info("showing avatar %d: %s", index, name)

    def encoding(self, animator: Animator, portrait: Portrait) -> Avatar:
        """The portrait's encoding by `animator`'s engine: kept from before, or made now (slow)."""
        return self._encodings.encoding(animator, portrait)

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self._portraits):
            raise UsageError(f"There is no avatar {index}: the avatars are 0 to {len(self._portraits) - 1}.")
