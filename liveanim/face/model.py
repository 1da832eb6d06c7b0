"""Where the face model comes from: a path the person gives, else the cache, else one download.

mediapipe's wheels ship no models; its Face Landmarker bundle (face detector, 478-point
landmarks) is Google's public file, fetched once into the same cache folder as the LIA-X
weights. Lookup order: the explicit path (`--face-model PATH`), $LIVEANIM_FACE_MODEL, the
cached file (checked against its SHA-256), a download.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from liveanim.errors import CheckpointError
from liveanim.weights.download import default_cache_dir
from liveanim.weights.fetch import FetchConfig, RemoteFile, check_sha256, fetch

log = logging.getLogger(__name__)

FACE_MODEL_ENV = "LIVEANIM_FACE_MODEL"
FACE_LANDMARKER = RemoteFile(
    url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
        "face_landmarker.task",
    filename="face_landmarker.task",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    size=3_758_596,
    what="the face model (MediaPipe Face Landmarker)",
    option=f"--face-model PATH (or {FACE_MODEL_ENV}=PATH)",
)


def resolve_face_model(path: Path | None = None, download: bool = True, *, cache_dir: Path | None = None,
                       fetch_config: FetchConfig = FetchConfig()) -> Path:
    """The face model file to load; downloads it into the cache on first use."""
    cache_dir = cache_dir or default_cache_dir()
    if path is None and os.environ.get(FACE_MODEL_ENV):
        path = Path(os.environ[FACE_MODEL_ENV])
    if path is not None:
        return _explicit(Path(path).expanduser(), cache_dir)
    cached = cache_dir / FACE_LANDMARKER.filename
    if cached.is_file():
        check_sha256(cached, FACE_LANDMARKER)
        return cached
    if not download:
        raise CheckpointError(f"No face model found in {cache_dir} and downloading is turned off. "
                              f"{FACE_LANDMARKER.manual_instructions(cache_dir)}")
    return fetch(FACE_LANDMARKER, cache_dir, fetch_config)


def _explicit(path: Path, cache_dir: Path) -> Path:
    """A file the person named is used as it is (it may be a newer model), but it must exist."""
    if not path.is_file():
        raise CheckpointError(
            f"The face model {path} does not exist or is not a file. Check the path given with "
            f"{FACE_LANDMARKER.option}, or leave it out to use {cache_dir / FACE_LANDMARKER.filename} "
            f"(downloaded from {FACE_LANDMARKER.url} on first use).")
    log.debug("Using the face model at %s", path)
    return path
