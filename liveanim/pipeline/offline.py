"""The official LIA-X offline modes, file to file: animate a portrait, edit an image, edit a
video, and sweep dictionary directions (linear manipulation).

Each mode brings its inputs to the model the way LIA-X was trained (the official face crop,
or a plain resize for inputs that are already portraits), encodes the source once, and
renders in chunks. Driving motion is relative to the first driving frame:

    z_target = z_s + (a_d - a_d[0] + a_s + e) @ Q.T

Outputs are checked before any model work (`prepare_output`; the CLI calls it before it even
loads the model), and each mode returns what it wrote, saying so when a video ended early.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import cv2
import numpy as np
from tqdm import tqdm

from liveanim.errors import MediaError
from liveanim.face import FaceDetector, crop_image, crop_portrait, resize_square
from liveanim.model import RESOLUTION
from liveanim.pipeline.animator import Animator, Avatar
from liveanim.pipeline.frames import to_uint8
from liveanim.pipeline.video import VideoReader, VideoWriter, read_image, write_image

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class OfflineConfig:
    """How the offline modes prepare inputs and write outputs.

    crop:     crop sources and driving videos around the face as LIA-X was trained; False
              for inputs that are already face crops (they are only resized to 512x512).
    chunk:    frames per model batch: larger is faster on a GPU and needs more memory.
    size:     side of the square output in pixels (the model renders 512).
    progress: show progress bars.
    """

    crop: bool = True
    chunk: int = 8
    size: int = RESOLUTION
    progress: bool = False


@dataclass(frozen=True)
class Written:
    """What an offline mode wrote.

    out:    the file.
    frames: frames in it (1 for an image).
    note:   what a person should know about it ('' when nothing), e.g. that the driving
            video ended before the frames it announced.
    """

    out: Path
    frames: int
    note: str = ""


@dataclass(frozen=True)
class Sweep:
    """A linear manipulation clip, as the official code makes it: the edit goes
    0 -> +e -> 0 -> -e -> 0, `steps` frames per leg.

    steps: frames per leg (4 legs in all).
    fps:   frame rate of the clip.
    """

    steps: int = 16
    fps: float = 12.0

    def factors(self) -> np.ndarray:
        """(4 * steps,) multipliers of the edit vector, one per frame."""
        up = np.arange(1, self.steps + 1) / self.steps
        down = np.arange(self.steps - 1, -1, -1) / self.steps
        return np.concatenate([up, down, -up, -down]).astype(np.float32)


def animate(animator: Animator, source: Path, driving: Path, out: Path,
            edit: np.ndarray | None = None, config: OfflineConfig = OfflineConfig()) -> Written:
    """Make the portrait in `source` move like the face in `driving`; the mp4 keeps its fps and sound."""
    prepare_output(out, video=True, inputs=(source, driving))
    with _detector(config) as detector, VideoReader(driving) as reader:
        avatar = animator.encode_avatar(_portrait(read_image(source), source, detector))
        frames = _animated(animator, avatar, _video_crops(reader, detector), edit, config.chunk)
        return _write_video(frames, out, reader.fps, driving, config, total=reader.frame_count, reading=driving)


def edit_video(animator: Animator, video: Path, out: Path,
               edit: np.ndarray | None = None, config: OfflineConfig = OfflineConfig()) -> Written:
    """Apply the dials to the person in `video`: its first frame, edited, moves as the video does."""
    prepare_output(out, video=True, inputs=(video,))
    with _detector(config) as detector, VideoReader(video) as reader:
        crops = _video_crops(reader, detector)
        first = next(crops)
        avatar = animator.encode_avatar(first)
        frames = _animated(animator, avatar, itertools.chain([first], crops), edit, config.chunk)
        return _write_video(frames, out, reader.fps, video, config, total=reader.frame_count, reading=video)


def edit_image(animator: Animator, source: Path, out: Path,
               edit: np.ndarray | None = None, config: OfflineConfig = OfflineConfig()) -> Written:
    """Apply the dials to the portrait in `source` and save the result as an image."""
    prepare_output(out, video=False, inputs=(source,))
    with _detector(config) as detector:
        avatar = animator.encode_avatar(_portrait(read_image(source), source, detector))
    image = to_uint8(animator.render(avatar, edit=edit))[0]
    write_image(out, resize_square(image, config.size))
    log.info("wrote %s", out)
    return Written(Path(out), 1)


def manipulate(animator: Animator, source: Path, out: Path, edit: np.ndarray,
               config: OfflineConfig = OfflineConfig(), sweep: Sweep = Sweep()) -> Written:
    """A clip of the portrait in `source` moving along the edit's directions and back (silent)."""
    prepare_output(out, video=True, inputs=(source,))
    with _detector(config) as detector:
        avatar = animator.encode_avatar(_portrait(read_image(source), source, detector))
    factors = sweep.factors()
    frames = _swept(animator, avatar, edit, factors, config.chunk)
    return _write_video(frames, out, Fraction(sweep.fps), None, config, total=len(factors))


def prepare_output(out: Path, video: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Make sure `out` can be written, before anything slow happens: its folder is created if
    missing and must take files, an image's name must say a format we write, and it must not
    be one of the `inputs`. Anything else is a MediaError saying what to change."""
    out = Path(out)
    if out.is_dir():
        example = out / ("out.mp4" if video else "out.png")
        raise MediaError(f"{out} is a folder: give the output a file name, e.g. {example}")
    if not video and not cv2.haveImageWriter(str(out)):
        raise MediaError(f"Cannot write {out}: name it .png, .jpg or .webp")
    for source in inputs:
        if out.exists() and Path(source).exists() and os.path.samefile(out, source):
            raise MediaError(f"{out} is also an input: writing it would destroy it. Choose another output file.")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _probe(folder)
    except OSError as error:
        raise MediaError(f"Cannot write into the folder {folder} ({error.strerror or error}): choose another "
                         f"place for {out.name}, or make the folder writable.") from error
    if out.exists() and not os.access(out, os.W_OK):
        raise MediaError(f"{out} exists and cannot be overwritten (it is read-only): choose another file name.")


def _detector(config: OfflineConfig) -> contextlib.AbstractContextManager[FaceDetector | None]:
    """One face detector for the whole call (starting mediapipe is slow), or None without crop."""
    return FaceDetector() if config.crop else contextlib.nullcontext()


def _portrait(image: np.ndarray, path: Path, detector: FaceDetector | None) -> np.ndarray:
    """The model input of a still: the official face crop, or the image resized to 512x512."""
    if detector is None:
        return resize_square(image, RESOLUTION)
    return crop_portrait(image, detector, source_name=str(path))[0]


def _video_crops(reader: VideoReader, detector: FaceDetector | None) -> Iterator[np.ndarray]:
    """The model inputs of a video. As in the official code, the crop box is found on the first
    frame and used for every frame, so that the head's motion stays in the picture.

    The first frame is read and checked for a face now, before any output is created.
    """
    frames = iter(reader)
    first = next(frames, None)
    if first is None:
        raise MediaError(f"{reader.path} holds no video frames")
    if detector is None:
        return (resize_square(frame, RESOLUTION) for frame in itertools.chain([first], frames))
    _, box = crop_portrait(first, detector, source_name=f"the first frame of {reader.path}")
    return (crop_image(frame, box) for frame in itertools.chain([first], frames))


def _animated(animator: Animator, avatar: Avatar, crops: Iterable[np.ndarray],
              edit: np.ndarray | None, chunk: int) -> Iterator[np.ndarray]:
    """Rendered frames driven by `crops`, with motion relative to the first crop."""
    neutral = None
    for batch in _batches(crops, chunk):
        alpha = animator.motion(np.stack(batch))
        if neutral is None:
            neutral = alpha[:1]
        yield from to_uint8(animator.render(avatar, alpha - neutral, edit))


def _swept(animator: Animator, avatar: Avatar, edit: np.ndarray, factors: np.ndarray,
           chunk: int) -> Iterator[np.ndarray]:
    """The avatar rendered with `factor * edit` for each factor."""
    for batch in _batches(factors, chunk):
        yield from to_uint8(animator.render(avatar, edit=np.outer(batch, edit)))


def _write_video(frames: Iterable[np.ndarray], out: Path, fps: Fraction, audio_from: Path | None,
                 config: OfflineConfig, total: int, reading: Path | None = None) -> Written:
    """Encode `frames` into `out`; `total` is how many the input announced (`reading`, if a video)."""
    start = time.perf_counter()
    with VideoWriter(out, fps, (config.size, config.size), audio_from) as writer:
        for frame in tqdm(frames, total=total or None, unit="frame", desc=Path(out).name, disable=not config.progress):
            writer.write(resize_square(frame, config.size))
    seconds = time.perf_counter() - start
    written = writer.frames_written
    log.info("wrote %s: %d frames at %.3g fps in %.1f s (%.1f ms per frame: reading, model and writing)",
             out, written, float(fps), seconds, 1000 * seconds / max(1, written))
    note = _shortfall(reading, written, total) if reading is not None else ""
    if note:
        log.warning("%s: %s", out, note)
    return Written(Path(out), written, note)


def _shortfall(video: Path, read: int, announced: int) -> str:
    """Why a video gave fewer frames than it announced ('' when it did not): usually a file cut
    short by an interrupted download or copy. A few frames of slack allow for estimated counts."""
    if announced <= 0 or read >= announced - max(1, announced // 50):
        return ""
    return (f"only {read} of the {announced} frames of {video} could be read; the video may be cut short "
            f"(an interrupted download or copy), so the output ends early")


def _probe(folder: Path) -> None:
    """Create and delete a file in `folder`: the one sure test that it takes files."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=".liveanim-probe-")
    os.close(handle)
    os.unlink(name)


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
