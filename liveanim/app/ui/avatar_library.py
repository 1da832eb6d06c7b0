"""The window's names for portraits: a file, or the built-in one, as the settings remember them.

Everything else about avatars (order, selection, crops, encodings and their rules) is the
pipeline's `AvatarList`, which the window's controller keeps across sessions.
"""

from __future__ import annotations

from pathlib import Path

from liveanim.pipeline.avatars import AvatarConfig, Portrait, default_avatar, prepare_portrait
from liveanim.pipeline.video import read_image

DEFAULT_AVATAR = "builtin:astronaut"


def load_avatar(origin: str, config: AvatarConfig) -> Portrait:
    """Read and crop a portrait (slow: face detection); a file without a face is a NoFaceError."""
    if origin == DEFAULT_AVATAR:
        image, name = default_avatar()
    else:
        image, name = read_image(Path(origin)), Path(origin).stem
    return prepare_portrait(image, name, config, origin)
