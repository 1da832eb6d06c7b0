"""Files written whole or not at all: the caches, manifests and reports that a crash, a full disk
or a second writer at the same moment must never leave half-written."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Union

Content = Union[str, bytes, memoryview, Callable[[Path], None]]


def write_atomically(path: Path, content: Content) -> None:
    """Write `content` to `path` whole or not at all: into a temporary file beside it, named per
    process and thread (so several writers at once each leave a whole file), renamed over `path`.

    content: text (written as UTF-8), bytes, or a function that writes the file at the path it is
             given (e.g. safetensors' `save_file`).
    Raises OSError (or what the function raises), and leaves no temporary file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if callable(content):
            content(partial)
        elif isinstance(content, str):
            partial.write_text(content, encoding="utf-8")
        else:
            partial.write_bytes(content)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
