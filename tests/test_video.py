"""Video and image files: what is written reads back the same, and bad files fail clearly.

`driving_frames`, `make_clip` and `probe` are shared with test_offline.py: they build and
inspect media straight through PyAV, independently of the code under test.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data

from liveanim.errors import MediaError
from liveanim.pipeline.video import EncoderConfig, VideoReader, VideoWriter, check_output, read_image, write_image

FPS = 10
SAMPLE_RATE = 16_000
FACE_CENTRE = (225.0, 115.0)  # (x, y) of the astronaut's face


def driving_frames(count: int) -> np.ndarray:
    """(count, 512, 512, 3) uint8: a real portrait whose head shifts and turns a little per frame."""
    image = data.astronaut()
    height, width = image.shape[:2]
    frames = []
    for i in range(count):
        matrix = cv2.getRotationMatrix2D(FACE_CENTRE, 2.0 * i, 1.0)
        matrix[:, 2] += (3.0 * i, -2.0 * i)
        frames.append(cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def make_clip(path: Path, frames: np.ndarray, fps: int = FPS, tone: bool = True, rotation: int = 0) -> Path:
    """An H.264 mp4 of `frames`, with a 440 Hz tone exactly as long as the video if `tone`."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if tone else None
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            container.mux(audio.encode(_tone(len(frames) / fps)))
            container.mux(audio.encode(None))
    return path


def _tone(seconds: float) -> av.AudioFrame:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                       format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
    return frame


@dataclass(frozen=True)
class Probe:
    """What a player would find in a file: every frame decoded, the audio's length in seconds."""

    frames: np.ndarray
    fps: Fraction
    audio_seconds: float | None


def probe(path: Path) -> Probe:
    """Decodes every frame; a file that does not play (no index, a broken packet) raises."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = stream.average_rate
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return Probe(frames, fps, None)
        samples = sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))
    return Probe(frames, fps, samples)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    frames = driving_frames(8)
    return make_clip(tmp_path_factory.mktemp("media") / "drive.mp4", frames), frames


def test_reader_gives_the_frames_fps_and_audio(clip):
    path, originals = clip
    with VideoReader(path) as reader:
        frames = np.stack(list(reader))
        assert reader.fps == FPS and reader.frame_count == len(originals) and reader.has_audio
    assert frames.shape == originals.shape and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - originals).mean() < 4  # H.264 at the default quality


def test_writer_round_trip_keeps_frames_fps_and_audio(clip, tmp_path):
    path, originals = clip
    out = tmp_path / "copy.mp4"
    with VideoReader(path) as reader, VideoWriter(out, reader.fps, (512, 512), audio_from=path) as writer:
        for frame in reader:
            writer.write(frame)
    written = probe(out)
    assert len(written.frames) == len(originals) and written.frames.shape[1:] == (512, 512, 3)
    assert written.fps == FPS
    assert written.audio_seconds == pytest.approx(len(originals) / FPS, abs=0.1)
    assert np.abs(written.frames.astype(int) - originals).mean() < 6  # encoded twice


def test_audio_stops_with_the_video(clip, tmp_path):
    path, originals = clip
    out = tmp_path / "short.mp4"
    with VideoWriter(out, FPS, (512, 512), audio_from=path) as writer:
        for frame in originals[:3]:
            writer.write(frame)
    assert probe(out).audio_seconds == pytest.approx(0.3, abs=0.1)


def test_silent_source_gives_a_silent_video(tmp_path):
    silent = make_clip(tmp_path / "silent.mp4", driving_frames(2), tone=False)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, FPS, (512, 512), audio_from=silent) as writer:
        writer.write(driving_frames(1)[0])
    assert probe(out).audio_seconds is None


def test_writer_keeps_what_was_written_when_interrupted(clip, tmp_path):
    _, originals = clip
    out = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError, match="stopped"):
        with VideoWriter(out, FPS, (512, 512)) as writer:
            writer.write(originals[0])
            writer.write(originals[1])
            raise RuntimeError("stopped")
    assert len(probe(out).frames) == 2


def test_fractional_fps_stays_exact(tmp_path):
    out = tmp_path / "ntsc.mp4"
    with VideoWriter(out, Fraction(30000, 1001), (64, 48)) as writer:
        for _ in range(3):
            writer.write(np.zeros((48, 64, 3), np.uint8))
    with VideoReader(out) as reader:
        assert reader.fps == Fraction(30000, 1001)


def test_reader_turns_phone_videos_upright(tmp_path):
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:, :32] = 255  # left half white
    path = make_clip(tmp_path / "phone.mp4", frame[None], tone=False, rotation=90)
    with VideoReader(path) as reader:
        upright = next(iter(reader))
    assert upright.shape == (64, 32, 3)  # turned a quarter counterclockwise: white now at the bottom
    assert upright[48:].mean() > 200 and upright[:16].mean() < 50


def test_missing_or_broken_video_names_the_file(tmp_path):
    with pytest.raises(MediaError, match="not found.*nope.mp4"):
        VideoReader(tmp_path / "nope.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(MediaError, match="notes.mp4"):
        VideoReader(text)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_full_disk_is_reported_as_such():
    noise = np.random.default_rng(0).integers(0, 256, (64, 512, 512, 3), dtype=np.uint8)
    with pytest.raises(MediaError, match="disk is full"):
        with VideoWriter(Path("/dev/full"), FPS, (512, 512)) as writer:
            for frame in noise:
                writer.write(frame)


def noise(count: int, size: int = 256) -> np.ndarray:
    """Frames that compress badly, so that a few fill a small file system."""
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_a_writer_killed_midway_leaves_a_file_that_plays(tmp_path):
    """A process killed while writing (no close, no index written last) keeps every fragment
    it had written: all but about the last second."""
    out = tmp_path / "killed.mp4"
    child = f"""
import os, sys
import numpy as np
from pathlib import Path
from liveanim.pipeline.video import VideoWriter
writer = VideoWriter(Path({str(out)!r}), {FPS}, (64, 64))
for i in range(35):
    writer.write(np.full((64, 64, 3), 7 * i, np.uint8))
os.kill(os.getpid(), 9)
"""
    result = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).parents[1], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    frames = probe(out).frames
    assert 2 * FPS <= len(frames) <= 35  # the first two seconds, at least
    np.testing.assert_allclose([frame.mean() for frame in frames[:3]], [0, 7, 14], atol=1.5)  # in order, from the start


def test_a_write_error_cuts_the_file_back_to_its_last_whole_fragment(tmp_path):
    """A file-size limit (EFBIG; the same path as a full disk) stops the writer mid-fragment;
    what was written before stays a file that plays to its end, without a broken packet."""
    out = tmp_path / "limited.mp4"
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, hard))
    try:
        with pytest.raises(MediaError, match="limited.mp4"):
            with VideoWriter(out, FPS, (256, 256), config=EncoderConfig(preset="ultrafast")) as writer:
                for frame in noise(60):
                    writer.write(frame)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    kept = probe(out).frames
    assert len(kept) % FPS == 0 and FPS <= len(kept) < writer.frames_written  # whole seconds only
    assert out.stat().st_size < 600_000


def test_outputs_are_checked_before_any_work(tmp_path):
    check_output(tmp_path / "new" / "folder" / "out.mp4")
    assert (tmp_path / "new" / "folder").is_dir(), "a missing folder is made"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(MediaError, match="a-file"):
        check_output(tmp_path / "a-file" / "out.mp4")
    with pytest.raises(MediaError, match="is a folder"):
        check_output(tmp_path)


def test_odd_frame_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "odd.mp4", FPS, (511, 512))


def test_image_round_trip_and_errors(tmp_path):
    image = data.astronaut()
    write_image(tmp_path / "a.png", image)
    assert np.array_equal(read_image(tmp_path / "a.png"), image)
    with pytest.raises(MediaError, match="not found.*b.png"):
        read_image(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"garbage")
    with pytest.raises(MediaError, match="c.png"):
        read_image(tmp_path / "c.png")
    with pytest.raises(MediaError, match="a.xyz"):
        write_image(tmp_path / "a.xyz", image)
