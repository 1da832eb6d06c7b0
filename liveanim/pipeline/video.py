"""Media files as uint8 RGB frames: videos in through PyAV, H.264/AAC mp4 and images out.

Every failure a person can fix (a wrong path, a file that is not a video, a full disk)
becomes a `MediaError` that names the file; the CLI prints it as one line.

Videos are written as fragmented mp4: the index goes at the start and every second of video
is appended as a self-contained fragment, flushed to the file at once. A crash, a kill or a
full disk therefore leaves a file that plays up to about the last second written, where a
plain mp4 (its index written last) would not play at all.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from liveanim.errors import MediaError

log = logging.getLogger(__name__)

FRAGMENT_S = 1.0  # seconds of video per fragment: what a crash or a full disk may cost a recording
_X264_LOOKAHEAD = 40  # x264's default look-ahead in frames (preset medium)


@dataclass(frozen=True)
class EncoderConfig:
    """How `VideoWriter` encodes.

    crf:           x264 constant quality: lower is better and larger (18 looks lossless).
    preset:        x264 speed against file size; 'veryfast' keeps up with a live recording.
    tune:          x264 tuning; 'zerolatency' hands each frame to the file at once (no
                   look-ahead), so a live recording keeps its last second on a crash.
    audio_bitrate: AAC bit rate in bits per second.
    """

    crf: int = 18
    preset: str = "medium"
    tune: str | None = None
    audio_bitrate: int = 128_000


class VideoReader:
    """The frames of a video file as upright uint8 RGB (H, W, 3) arrays, decoded one at a time.

    Decoding lazily keeps long driving videos out of memory. Phone videos store their
    orientation as metadata; frames come out turned the way a player shows them.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._container = _open_input(self.path)
        if not self._container.streams.video:
            self._container.close()
            raise MediaError(f"{self.path} holds no video stream: use a video file (mp4, mov, mkv, webm...)")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"

    @property
    def fps(self) -> Fraction:
        """Frames per second, exact (e.g. 30000/1001); 25 if the file does not say."""
        return self._stream.average_rate or self._stream.guessed_rate or Fraction(25)

    @property
    def frame_count(self) -> int:
        """The number of frames the file announces, or an estimate from its duration (progress bars)."""
        if self._stream.frames:
            return self._stream.frames
        if self._stream.duration is None:
            return 0
        return round(self._stream.duration * self._stream.time_base * self.fps)

    @property
    def has_audio(self) -> bool:
        return bool(self._container.streams.audio)

    def __iter__(self) -> Iterator[np.ndarray]:
        with _reading(self.path):
            for frame in self._container.decode(self._stream):
                yield _upright(frame.to_ndarray(format="rgb24"), frame.rotation)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class VideoWriter:
    """Encodes uint8 RGB frames into an H.264 (yuv420p) fragmented mp4, with the audio of another file.

    Frames are pushed one at a time and stamped by their index (frame i shows at i / fps),
    so a live recorder and an offline render use it alike. The audio of `audio_from` is
    re-encoded to AAC in step with the frames, up to the length of the video. The file is
    finalized on `close`, also when a `with` block ends in an exception. After a write error
    (a full disk) nothing more is written, and `close` cuts the file back to its last whole
    fragment, so it plays up to there.
    """

    def __init__(self, path: Path, fps: float | Fraction, size: tuple[int, int],
                 audio_from: Path | None = None, config: EncoderConfig = EncoderConfig()) -> None:
        """
        path:       the mp4 file to write (the container is mp4 whatever the file is called).
        fps:        frame rate; pass the reader's exact Fraction to keep e.g. 29.97 exact.
        size:       (width, height) of every frame; both even, as yuv420p needs.
        audio_from: a media file whose first audio stream is copied in; None for no sound.
        """
        width, height = size
        if width % 2 or height % 2:
            raise ValueError(f"H.264 in yuv420p needs an even frame size, got {width}x{height}")
        self.path = Path(path)
        self.size = size
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.frames_written = 0
        self._failed = False
        self._whole = 0  # the file's size after the last fragment written in full
        with _writing(self.path):
            self._container = av.open(str(self.path), mode="w", format="mp4", options=_FRAGMENTED)
        try:
            self._video = self._add_video(config)
            self._audio = _AudioTrack.open(audio_from, self._container, config) if audio_from else None
        except BaseException:
            self._container.close()
            raise

    @property
    def duration(self) -> float:
        """Seconds of video written so far."""
        return float(self.frames_written / self.fps)

    def write(self, rgb: np.ndarray) -> None:
        """Append one uint8 RGB (height, width, 3) frame."""
        assert self._video is not None, f"{self.path} is already closed"
        width, height = self.size
        assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3), (rgb.dtype, rgb.shape, self.size)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames_written
        frame.time_base = 1 / self.fps
        with self._guarded():
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
            if self._audio is not None:
                self._audio.write_until(self.duration)

    def close(self) -> None:
        """Flush the encoders and write the last fragment; later calls do nothing."""
        if self._video is None:
            return
        video, self._video = self._video, None
        try:
            if not self._failed:
                with self._guarded():
                    self._container.mux(video.encode(None))
                    if self._audio is not None:
                        self._audio.finish(self.duration)
        finally:
            try:
                with self._guarded():
                    self._close_all()
            finally:
                if self._failed:
                    self._cut_to_whole_fragments()
        log.debug("wrote %s: %d frames at %s fps", self.path, self.frames_written, self.fps)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep what was written, but let the original error through
            self.close()
        except MediaError as error:
            log.warning("%s may be incomplete: %s", self.path, error)

    def _add_video(self, config: EncoderConfig) -> av.video.stream.VideoStream:
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = self.size
        stream.pix_fmt = "yuv420p"
        # x264 holds up to 40 frames back to plan its rate; a second's worth at most keeps what
        # a crash loses to about a second (a fragment's worth) at any frame rate
        lookahead = min(_X264_LOOKAHEAD, max(1, round(self.fps)))
        stream.options = {"crf": str(config.crf), "preset": config.preset, "rc-lookahead": str(lookahead),
                          **({"tune": config.tune} if config.tune else {})}
        return stream

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """Errors as MediaError; after one, nothing more is muxed (PyAV crashes on a failed output).
        Each write ends on a whole fragment (or before the next one): its size is noted."""
        try:
            with _writing(self.path):
                yield
        except MediaError:
            self._failed = True
            raise
        if not self._failed:
            self._whole = _regular_file_size(self.path) or self._whole

    def _cut_to_whole_fragments(self) -> None:
        """Drop a fragment the failed write left half-written; remove a file with no fragment."""
        if _regular_file_size(self.path) is None:
            return  # not a regular file (a pipe, /dev/full): nothing to cut
        try:
            if self._whole:
                os.truncate(self.path, self._whole)
                log.info("%s cut back to its last whole fragment (%d bytes)", self.path, self._whole)
            else:
                self.path.unlink()
                log.info("%s removed: not one fragment was written", self.path)
        except OSError as error:
            log.warning("could not tidy %s after the error: %s", self.path, _reason(error))

    def _close_all(self) -> None:
        try:
            if self._audio is not None:
                self._audio.close()
        finally:
            self._container.close()


class _AudioTrack:
    """The first audio stream of another file, re-encoded to AAC as the video advances."""

    def __init__(self, source: av.container.InputContainer, output: av.container.OutputContainer,
                 config: EncoderConfig) -> None:
        self._source = source
        self._path = Path(source.name)
        decoded = source.streams.audio[0]
        layout = "mono" if decoded.codec_context.layout.nb_channels == 1 else "stereo"
        self._rate = decoded.codec_context.sample_rate
        self._stream = output.add_stream("aac", rate=self._rate, layout=layout)
        self._stream.bit_rate = config.audio_bitrate
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=self._rate)
        self._frames = source.decode(decoded)
        self._samples = 0

    @classmethod
    def open(cls, path: Path, output: av.container.OutputContainer, config: EncoderConfig) -> _AudioTrack | None:
        """The track of `path`'s audio, or None when it has no sound."""
        source = _open_input(Path(path))
        if not source.streams.audio:
            log.info("%s has no audio track; the output is silent", path)
            source.close()
            return None
        return cls(source, output, config)

    def write_until(self, seconds: float) -> None:
        """Encode source audio until `seconds` of it are written (or the source ends)."""
        while self._samples < seconds * self._rate:
            with _reading(self._path):
                frame = next(self._frames, None)
            if frame is None:
                return
            for resampled in self._resampler.resample(frame):
                self._encode(resampled)

    def finish(self, seconds: float) -> None:
        """Write the audio up to the end of the video and flush the encoder."""
        self.write_until(seconds)
        self._stream.container.mux(self._stream.encode(None))

    def close(self) -> None:
        self._source.close()

    def _encode(self, frame: av.AudioFrame) -> None:
        frame.pts = self._samples
        frame.time_base = Fraction(1, self._rate)
        self._samples += frame.samples
        self._stream.container.mux(self._stream.encode(frame))


def read_image(path: Path) -> np.ndarray:
    """An image file (PNG, JPEG, WebP, ...) as uint8 RGB (H, W, 3), turned as its EXIF says."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"Image not found: {path}")
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)  # fromfile: non-ASCII paths
    if image is None:
        raise MediaError(f"Cannot read {path} as an image: use a PNG, JPEG or WebP file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Save uint8 RGB (H, W, 3) in the format the file name says (.png, .jpg, .webp...)."""
    path = Path(path)
    try:
        ok, data = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except cv2.error:
        ok = False
    if not ok:
        raise MediaError(f"Cannot write {path}: name it .png, .jpg or .webp")
    with _writing(path):
        path.write_bytes(data.tobytes())


def check_output(path: Path) -> None:
    """Make `path`'s folder if missing and check that a file can be written there, so that a
    bad output is refused before any model work, with a message that names it."""
    path = Path(path)
    if path.is_dir():
        raise MediaError(f"Cannot write {path}: it is a folder. Give a file name such as {path / 'out.mp4'}")
    folder = path.parent
    try:
        if path.exists():
            with open(path, "ab"):  # the file itself (or device) can be written: it is not changed
                pass
            return
        if not folder.is_dir():
            folder.mkdir(parents=True)
            log.info("made the folder %s", folder)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise MediaError(f"Cannot write {path} ({_reason(error)}: {folder}): pick a folder you can write to") from error


def _regular_file_size(path: Path) -> int | None:
    """The size of `path` if it is a regular file (not a device or a pipe), else None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


# mp4 that plays without its end: the index goes out with the first fragment (delayed so that it
# holds the edit lists that keep sound and picture in step), then each fragment as it is made
_FRAGMENTED = {
    "movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof",
    "frag_duration": str(round(FRAGMENT_S * 1e6)),
    "flush_packets": "1",
}


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError(f"Video not found: {path}")
    with _reading(path):
        return av.open(str(path))


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """The frame turned by its display rotation (degrees counterclockwise, multiples of 90)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Decoder and demuxer errors become a MediaError that names the file."""
    try:
        yield
    except (av.error.FFmpegError, OSError) as error:
        raise MediaError(
            f"Cannot read {path} as a video ({_reason(error)}): use an mp4, mov, mkv or webm file"
        ) from error


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Encoder and file-system errors become a MediaError; a full disk says so."""
    try:
        yield
    except (av.error.FFmpegError, OSError) as error:
        if getattr(error, "errno", None) == errno.ENOSPC:
            raise MediaError(
                f"The disk is full: could not finish {path}. Free some space or write elsewhere."
            ) from error
        raise MediaError(f"Cannot write {path} ({_reason(error)})") from error


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)
