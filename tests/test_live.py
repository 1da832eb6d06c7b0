"""The live loop end to end on a small seeded model: a driving video made from a real photo,
through tracking, motion, rendering and paste-back, into a virtual camera registered here
(through the real pyvirtualcam.Camera API) and into recordings.

The CPU renders a frame in seconds, so each test delivers only a few frames.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import pyvirtualcam
import torch
from skimage import data

from liveanim.app.cli import live as live_cli
from liveanim.app.cli import main
from liveanim.app.cli import options as cli_options
from liveanim.engines import EngineConfig, create_engine
from liveanim.errors import CameraError
from liveanim.face import CropBox, FaceTracker, crop_image, paste_back
from liveanim.motion.controller import MotionConfig
from liveanim.motion.dials import DIALS_BY_NAME, edit_vector
from liveanim.motion.neutral import NeutralConfig
from liveanim.pipeline.animator import Animator
from liveanim.pipeline.avatar_list import AvatarList
from liveanim.pipeline.avatars import AvatarConfig, prepare_portrait
from liveanim.pipeline.canvas import AvatarCanvas, _device_canvas, _paste_on_device
from liveanim.pipeline import sources
from liveanim.pipeline.events import (AvatarUncropped, EnginePreparing, FrameDelivered, RecordingFailed, RecordingStarted,
                                      RecordingStopped, SessionEvent, SourceLost, SourceReopened, Started, Stopped,
                                      TrackingUnavailable, VirtualCameraFailed, VirtualCameraOff, VirtualCameraOn)
from liveanim.pipeline import live as live_module
from liveanim.pipeline.live import LiveConfig, LiveFrame, LiveSession, _FrameQueue
from liveanim.pipeline.sinks import RecorderSink, VirtualCameraConfig, VirtualCameraSink, load_motion_track
from liveanim.pipeline.sources import CameraConfig, CameraSource, ImageFolderSource, VideoFileSource
from liveanim.pipeline.video import VideoReader, VideoWriter, write_image
from tests.test_face import without_egl
from tests.test_video import probe

FACE_CENTRE = (225.0, 115.0)  # (x, y) of the astronaut's face
TIMEOUT_S = 90.0
REPO = Path(__file__).resolve().parents[1]
TINY = ["--seeded", "0.125", "--device", "cpu", "--engine", "torch"]
CLI_TIMEOUT_S = 180.0  # a CPU shared with other work renders a frame in one to several seconds


# ----- fixtures and helpers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def animator() -> Animator:
    return Animator(create_engine(EngineConfig(backend="torch", device="cpu", seeded=True, width=0.125)))


class SpyAnimator(Animator):
    """The real animator, noting what reaches the renderer: the motion and the edit."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.rendered: list[tuple[np.ndarray, np.ndarray]] = []

    def render(self, avatar, motion=None, edit=None):
        self.rendered.append((motion.cpu().numpy()[0].copy(), edit.cpu().numpy()[0].copy()))
        return super().render(avatar, motion, edit)


def head_pose(step: int, angle: float = 8.0, shift: float = 12.0) -> np.ndarray:
    """The astronaut photo with the head turned and moved: synthetic head motion."""
    photo = data.astronaut()
    phase = np.sin(step * 0.9)
    matrix = cv2.getRotationMatrix2D(FACE_CENTRE, angle * phase, 1.0)
    matrix[:, 2] += (shift * phase, 0.5 * shift * phase)
    return cv2.warpAffine(photo, matrix, photo.shape[1::-1], borderMode=cv2.BORDER_REFLECT)


def driving_video(path: Path, frames: int, fps: int = 30) -> Path:
    with VideoWriter(path, fps, (512, 512)) as writer:
        for step in range(frames):
            writer.write(head_pose(step))
    return path


def frames_in(path: Path) -> int:
    with VideoReader(path) as reader:
        return sum(1 for _ in reader)


def playable_frames(path: Path) -> int:
    """The frames a player decodes from `path`, or 0 while it does not play (no index yet, or a
    broken packet anywhere)."""
    try:
        return len(probe(path).frames)
    except (av.error.FFmpegError, OSError, ValueError):
        return 0


def wait_for(condition, timeout_s: float = TIMEOUT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.1)


def start_cli(*arguments: str, code: str = "from liveanim.app.cli import main; import sys; sys.exit(main(sys.argv[1:]))",
              ) -> subprocess.Popen:
    """`main.py` in a process of its own (run by `code`), on the tiny seeded model."""
    return subprocess.Popen([sys.executable, "-c", code, *arguments, *TINY], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size_kb: int, read_only: bool = False):
    """A small file system of its own at `folder` (needs root, as on CI); skips where it cannot mount."""
    folder.mkdir()
    options = f"size={size_kb}k" + (",ro" if read_only else "")
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill_up(folder: Path) -> None:
    """Write into `folder` until its file system is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as filler:
        while True:
            filler.write(bytes(1 << 16))
    with pytest.raises(OSError) as full, open(folder / "more", "wb", buffering=0) as more:
        more.write(bytes(1 << 16))
    assert full.value.errno == errno.ENOSPC


def frames_to(callback) -> callable:
    """A session's event callback that hands each delivered frame to `callback`."""
    return lambda event: callback(event.frame) if isinstance(event, FrameDelivered) else None


class Events(list):
    """Every event of a session but the frames, in order."""

    def __call__(self, event: SessionEvent) -> None:
        if not isinstance(event, FrameDelivered):
            self.append(event)

    def of(self, kind: type) -> list:
        return [event for event in self if isinstance(event, kind)]


def register_test_vcam(name: str, fail: str | None = None, unplug_after: int | None = None) -> type:
    """A pyvirtualcam backend that keeps what it is sent (or fails to start, like a missing driver,
    or fails after `unplug_after` frames, like a device that goes away)."""

    class Backend:
        frames: list[np.ndarray] = []
        opened: list[dict] = []
        closed = False

        def __init__(self, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw) -> None:
            if fail:
                raise RuntimeError(fail)
            type(self).opened.append(dict(width=width, height=height, fps=fps, fourcc=fourcc))

        def send(self, frame: np.ndarray) -> None:
            if unplug_after is not None and len(type(self).frames) >= unplug_after:
                raise OSError("device unplugged")
            type(self).frames.append(frame.copy())

        def close(self) -> None:
            type(self).closed = True

        def device(self) -> str:
            return f"/dev/{name}"

        def native_fourcc(self) -> None:
            return None

    pyvirtualcam.register_backend(name, Backend)
    return Backend


class ScriptedSource:
    """Frames pushed by the test, one at a time, with the timestamps it chooses."""

    fps = 30.0

    def __init__(self, live: bool = True) -> None:
        """live: False makes the session lossless (every frame is rendered)."""
        self.live = live
        self._frames: queue.Queue = queue.Queue()

    def push(self, frame: np.ndarray, timestamp: float) -> None:
        self._frames.put((frame, timestamp))

    def frames(self, on_event=None):
        while (item := self._frames.get()) is not None:
            yield item

    def close(self) -> None:
        self._frames.put(None)

    def describe(self) -> str:
        return "scripted frames"


class Stepper:
    """Runs a session over a ScriptedSource and hands back each delivered frame."""

    def __init__(self, config: LiveConfig, animator: Animator) -> None:
        self.source = ScriptedSource()
        self.delivered: queue.Queue[LiveFrame] = queue.Queue()
        self.session = LiveSession(config, animator, self.source, on_event=frames_to(self.delivered.put))
        self.session.add_avatar(data.astronaut(), "astronaut")
        self.session.start()

    def step(self, frame: np.ndarray, timestamp: float) -> LiveFrame:
        self.source.push(frame, timestamp)
        return self.delivered.get(timeout=TIMEOUT_S)


# ----- end to end -------------------------------------------------------------------------

def test_video_flows_end_to_end_into_the_virtual_camera_and_recordings(animator, tmp_path):
    vcam = register_test_vcam("test-flow")
    video = driving_video(tmp_path / "drive.mp4", frames=3)
    seen: list[LiveFrame] = []
    events = Events()
    config = LiveConfig(vcam=True, virtual_camera=VirtualCameraConfig(backend="test-flow"),
                        record=tmp_path / "out.mp4", record_motion=tmp_path / "motion.track")
    session = LiveSession(config, animator, VideoFileSource(video, realtime=False),
                          on_event=lambda event: (events(event), frames_to(seen.append)(event)))
    session.start()
    assert session.wait(TIMEOUT_S), "the session did not end with the video"
    session.stop()

    assert session.error is None, events
    assert isinstance(events[0], EnginePreparing) and isinstance(events[1], Started)
    assert events[1].source == "video drive.mp4" and isinstance(events[-1], Stopped)
    assert [type(e) for e in events[2:5]] == [VirtualCameraOn, RecordingStarted, RecordingStarted]
    assert {e.path for e in events.of(RecordingStopped)} == {tmp_path / "out.mp4", tmp_path / "motion.track"}
    assert events.of(VirtualCameraOff) == [VirtualCameraOff("/dev/test-flow")]
    assert [frame.index for frame in seen] == [0, 1, 2]  # every frame, in order
    assert vcam.opened == [dict(width=512, height=512, fps=30.0, fourcc=vcam.opened[0]["fourcc"])]
    assert vcam.opened[0]["fourcc"] == pyvirtualcam.util.encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
    assert len(vcam.frames) == 3 and vcam.closed
    for sent, frame in zip(vcam.frames, seen):
        assert sent.dtype == np.uint8 and sent.size == 512 * 512 * 3
        np.testing.assert_array_equal(sent.reshape(512, 512, 3), frame.output)
    assert all(frame.face_found for frame in seen)
    assert not np.array_equal(seen[0].output, seen[1].output)  # the head moved, so did the avatar
    assert frames_in(tmp_path / "out.mp4") == 3
    track = load_motion_track(tmp_path / "motion.track")
    assert track.motion.shape == (3, 40) and track.fps == 30.0
    np.testing.assert_array_equal(track.motion[0], 0)  # the first frame is its own neutral
    assert session.stats.frames == 3


def test_settings_change_the_motion_that_reaches_the_renderer(animator):
    spy = SpyAnimator(animator.engine)
    motion = MotionConfig(neutral=NeutralConfig(frames=2), smoothing=0.0)
    run = Stepper(LiveConfig(track=False, motion=motion), spy)
    still, turned = head_pose(0), head_pose(2)
    try:
        run.step(still, 0.0)
        run.step(still, 0.05)  # two still frames: the neutral pose is captured
        np.testing.assert_allclose(spy.rendered[-1][0], 0.0, atol=1e-6)
        run.step(turned, 0.1)
        moved = spy.rendered[-1][0]
        assert np.abs(moved).max() > 1e-3

        run.session.set_intensity("head", 0.0)
        run.step(turned, 0.2)
        head = [d.index for d in DIALS_BY_NAME.values() if d.group == "head"]
        np.testing.assert_array_equal(spy.rendered[-1][0][head], 0.0)
        others = np.setdiff1d(np.arange(40), head)
        np.testing.assert_allclose(spy.rendered[-1][0][others], moved[others], atol=1e-6)

        run.session.set_intensity("head", 1.0)
        edit = edit_vector({"smirk": 0.3})
        run.session.set_edit(edit)
        run.step(turned, 0.3)
        np.testing.assert_allclose(spy.rendered[-1][0], moved, atol=1e-6)
        np.testing.assert_array_equal(spy.rendered[-1][1], edit)

        run.session.calibrate()  # the turned head becomes the neutral after two still frames
        run.step(turned, 0.4)
        run.step(turned, 0.5)
        np.testing.assert_allclose(spy.rendered[-1][0], 0.0, atol=1e-5)
    finally:
        run.session.stop()


def test_face_lost_holds_then_eases_to_neutral(animator):
    spy = SpyAnimator(animator.engine)
    motion = MotionConfig(neutral=NeutralConfig(frames=2), smoothing=0.0, hold_s=0.3, ease_s=0.4)
    run = Stepper(LiveConfig(motion=motion), spy)
    blank = np.zeros((512, 512, 3), dtype=np.uint8)
    try:
        run.step(head_pose(0), 0.0)
        last = run.step(head_pose(2), 0.1)
        assert last.face_found and np.abs(last.motion).max() > 1e-3
        held = run.step(blank, 0.2)  # lost at 0.2: held until 0.5, back at rest by 0.9
        while held.face_found:  # tracked beside the loop, a frame may be cropped with the box of the one before
            assert held.index < 5, "the tracker never caught up with the blank frames"
            last, held = held, run.step(blank, 0.2)
        assert not held.face_found and held.face_box == last.face_box
        np.testing.assert_array_equal(held.output, last.output)  # held: the same frame, not re-rendered
        renders = len(spy.rendered)
        easing = run.step(blank, 0.7)
        assert len(spy.rendered) == renders + 1
        ratio = spy.rendered[-1][0] / last.motion
        assert ratio[np.abs(last.motion).argmax()] == pytest.approx(0.5)  # half way back
        rested = run.step(blank, 1.0)
        np.testing.assert_array_equal(spy.rendered[-1][0], 0.0)  # the avatar's own rest pose
        assert not np.array_equal(rested.output, easing.output)
    finally:
        run.session.stop()


class CropSpy(Animator):
    """The real animator, keeping each driving crop the motion thread reads a motion code from."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.crops: list[np.ndarray] = []

    def motion(self, frames):
        if threading.current_thread().name == "live-motion":
            self.crops.append(np.array(frames))
        return super().motion(frames)


def test_a_slow_tracker_never_holds_back_the_frames_and_each_keeps_its_own_box(animator, monkeypatch):
    """Tracking runs beside the loop: with the tracker stuck after its first frame, every frame of
    a lossless source is still animated (with the one box there is); once it goes on, the crop
    follows the face again. Each frame reaches the outputs with the box its crop was taken with."""
    release = threading.Event()
    tracked: list[int] = []

    class StuckTracker(FaceTracker):
        """The real tracker, stuck after its first frame until released: as slow as can be."""

        def track(self, frame):
            if tracked:
                release.wait(TIMEOUT_S)
            tracked.append(len(tracked))
            return super().track(frame)

    monkeypatch.setattr(live_module, "FaceTracker", StuckTracker)
    spy = CropSpy(animator.engine)
    source = ScriptedSource(live=False)
    delivered: queue.Queue[LiveFrame] = queue.Queue()
    session = LiveSession(LiveConfig(), spy, source, on_event=frames_to(delivered.put))
    session.add_avatar(data.astronaut(), "astronaut")
    session.start()
    try:
        for step in range(6):
            source.push(head_pose(step), step / 30)
        stuck = [delivered.get(timeout=TIMEOUT_S) for _ in range(6)]
        assert len(tracked) == 1  # only the first frame has been tracked
        assert [frame.index for frame in stuck] == list(range(6))
        assert all(frame.face_found and frame.face_box == stuck[0].face_box for frame in stuck)

        release.set()
        moved = np.roll(head_pose(0), 120, axis=1)  # far enough to be followed at once
        frames = list(stuck)
        while frames[-1].face_box.left < stuck[0].face_box.left + 60:
            assert len(frames) < 12, "the crop never followed the face once the tracker went on"
            source.push(moved, len(frames) / 30)
            frames.append(delivered.get(timeout=TIMEOUT_S))
        with_face = [frame for frame in frames if frame.face_found]
        assert len(spy.crops) == len(with_face)
        for crop, frame in zip(spy.crops, with_face):
            np.testing.assert_array_equal(crop, crop_image(frame.driving, frame.face_box))
    finally:
        release.set()
        session.stop()


def test_the_tracker_follows_one_frame_per_rendered_frame_not_each_frame_read_ahead(animator, monkeypatch):
    """Where rendering is the slow stage (a CPU), the motion thread reads frames ahead that are
    then dropped; once it follows a face, the tracker runs once per frame the renderer takes, so
    the renderer keeps the CPU."""
    tracks: list[int] = []
    renders: list[int] = []

    class CountingTracker(FaceTracker):
        def track(self, frame):
            tracks.append(len(tracks))
            return super().track(frame)

    class SlowRenderer(CropSpy):
        def render(self, avatar, motion=None, edit=None):
            renders.append(len(renders))
            time.sleep(0.5)
            return super().render(avatar, motion, edit)

    monkeypatch.setattr(live_module, "FaceTracker", CountingTracker)
    spy = SlowRenderer(animator.engine)
    source = ScriptedSource(live=True)
    started = threading.Event()
    session = LiveSession(LiveConfig(), spy, source,
                          on_event=lambda event: started.set() if isinstance(event, Started) else None)
    session.add_avatar(data.astronaut(), "astronaut")
    session.start()
    try:
        assert started.wait(TIMEOUT_S)
        for step in range(60):
            source.push(head_pose(step), step / 30)
            time.sleep(0.05)
        source.close()
        assert session.wait(TIMEOUT_S)
    finally:
        session.stop()
    rendered = len(renders) - 1  # the first render is the warm-up's
    assert len(spy.crops) > rendered + 3, "the motion thread did not read ahead: nothing to show"
    assert len(tracks) <= rendered + 1  # the first face's frame, then one per frame rendered


# ----- degrading, not crashing ------------------------------------------------------------

class FakeCapture:
    """A camera that delivers `frames` frames and then unplugs (reads fail), like cv2.VideoCapture."""

    def __init__(self, frames: int, opens: bool = True) -> None:
        self._left = frames
        self._opens = opens
        self.released = False

    def isOpened(self) -> bool:
        return self._opens

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._left <= 0:
            return False, None
        self._left -= 1
        return True, np.full((48, 64, 3), self._left, dtype=np.uint8)

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: 64.0, cv2.CAP_PROP_FRAME_HEIGHT: 48.0, cv2.CAP_PROP_FPS: 15.0}.get(prop, 0.0)

    def release(self) -> None:
        self.released = True


def test_without_the_face_library_the_live_loop_goes_on_with_centre_crops(animator, monkeypatch):
    without_egl(monkeypatch)
    source = ScriptedSource(live=False)
    seen: list[LiveFrame] = []
    events = Events()
    session = LiveSession(LiveConfig(), animator, source,
                          on_event=lambda event: (events(event), frames_to(seen.append)(event)))
    session.start()  # the default avatar is added on the session's thread
    try:
        for step in range(3):
            source.push(cv2.copyMakeBorder(head_pose(step), 0, 0, 64, 64, cv2.BORDER_REFLECT), step / 30)
        wait_for(lambda: len(seen) == 3, what="three frames")
    finally:
        session.stop()
    assert session.error is None, events
    assert [event.names for event in events.of(AvatarUncropped)] == [("astronaut",)]
    assert len(events.of(TrackingUnavailable)) == 1
    assert "sudo apt install libegl1" in events.of(TrackingUnavailable)[0].message
    assert all(frame.face_found and frame.face_box == CropBox(64, 0, 512) for frame in seen)  # the centre square
    assert session.avatars.current().box == CropBox(0, 0, 512)  # the whole (square) portrait


def test_live_cli_without_the_face_library_warns_and_streams(monkeypatch, tmp_path, caplog):
    without_egl(monkeypatch)
    portrait = tmp_path / "me.png"
    write_image(portrait, data.astronaut())
    video = driving_video(tmp_path / "drive.mp4", frames=2)
    with caplog.at_level(logging.WARNING):
        assert main(["live", "--video", str(video), "--fast", "--avatar", str(portrait),
                     "--record", str(tmp_path / "out.mp4"), *TINY]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(line.startswith("face tracking is unavailable") and "sudo apt install libegl1" in line
               for line in warnings), warnings
    assert any("me.png" in line and "centre square is used as it is" in line for line in warnings), warnings
    assert frames_in(tmp_path / "out.mp4") == 2


def test_camera_failing_mid_stream_is_reopened_with_backoff(monkeypatch):
    captures = [FakeCapture(1), FakeCapture(3), FakeCapture(0, opens=False), FakeCapture(2)]
    made = iter(captures)
    monkeypatch.setattr(sources, "open_capture", lambda device, api: next(made))
    source = CameraSource(CameraConfig(read_failures=2, backoff_s=0.01))  # checks the camera with the first
    events = Events()
    frames = []
    for frame, captured_at in source.frames(events):
        frames.append(frame)
        if len(frames) == 5:
            source.close()
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)
    assert all(capture.released for capture in captures)
    assert events == [SourceLost("camera 0", 0.01), SourceLost("camera 0", 0.02), SourceReopened("camera 0")]


def test_image_folder_plays_in_name_order_once_or_looped(tmp_path):
    for value in (2, 0, 1):
        write_image(tmp_path / f"frame_{value}.png", np.full((8, 8, 3), value, dtype=np.uint8))
    once = [frame[0, 0, 0] for frame, _ in ImageFolderSource(tmp_path, realtime=False).frames()]
    assert once == [0, 1, 2]
    looped = ImageFolderSource(tmp_path, fps=100.0, loop=True)
    stamps = []
    begun = time.monotonic()  # the source's clock starts after this, so frame 6 is due >= 60 ms later
    for _, captured_at in looped.frames():
        stamps.append(captured_at)
        if len(stamps) == 7:
            looped.close()
    assert len(stamps) == 7 and stamps[-1] - begun >= 6 / 100.0  # paced at its rate, however late frame 0 came


def test_queue_drops_its_oldest_frame_when_full():
    dropped = []
    frames = _FrameQueue(2, drop_oldest=True, on_drop=lambda: dropped.append(1))
    for item in range(5):
        frames.put(item)
    assert len(frames) == 2 and len(dropped) == 3
    assert [frames.get(0), frames.get(0), frames.get(0)] == [3, 4, None]


def test_slow_output_drops_frames_and_latency_stays_bounded(animator, tmp_path):
    blank = np.zeros((512, 512, 3), dtype=np.uint8)  # no face: the avatar rests, rendered once
    video = tmp_path / "blank.mp4"
    with VideoWriter(video, 30, (512, 512)) as writer:
        for _ in range(150):
            writer.write(blank)
    latencies: list[float] = []
    indices: list[int] = []

    def slow_output(frame: LiveFrame) -> None:
        latencies.append(time.monotonic() - frame.captured_at)
        indices.append(frame.index)
        time.sleep(0.15)

    session = LiveSession(LiveConfig(max_frames=10), animator, VideoFileSource(video, realtime=True),
                          on_event=frames_to(slow_output))
    session.add_avatar(data.astronaut(), "astronaut")
    session.start()
    assert session.wait(TIMEOUT_S)
    session.stop()
    stats = session.stats
    assert len(indices) == 10 and indices == sorted(indices)
    assert stats.dropped > 0 and indices[-1] - indices[0] > 9  # frames were skipped, and counted
    bound = (LiveConfig.queue_size + 2) * 0.15 + 0.25  # queued frames ahead + one output + slack
    assert max(latencies[-5:]) < bound, latencies


def test_without_a_virtual_camera_driver_the_fix_is_shown_and_recording_goes_on(animator, tmp_path):
    register_test_vcam("test-missing", fail="No v4l2 loopback device found")
    video = driving_video(tmp_path / "drive.mp4", frames=2)
    events = Events()
    config = LiveConfig(vcam=True, virtual_camera=VirtualCameraConfig(backend="test-missing"), track=False,
                        record=tmp_path / "out.mp4")
    session = LiveSession(config, animator, VideoFileSource(video, realtime=False), on_event=events)
    session.add_avatar(data.astronaut(), "astronaut")
    session.start()
    assert session.wait(TIMEOUT_S)
    session.stop()
    [failed] = events.of(VirtualCameraFailed)
    assert "No v4l2 loopback device found" in failed.reason and failed.device is None
    assert "modprobe v4l2loopback" in failed.setup and failed.setup in failed.message
    assert session.error is None
    assert frames_in(tmp_path / "out.mp4") == 2


def test_sigterm_stops_the_cli_and_finalizes_the_recording(tmp_path):
    vcam = register_test_vcam("test-sigterm")
    video = driving_video(tmp_path / "drive.mp4", frames=4)
    parser = argparse.ArgumentParser()
    live_cli.register(parser.add_subparsers())
    args = parser.parse_args([
        "live", "--video", str(video), "--loop", "--fast", "--no-track", "--vcam", "--vcam-backend", "test-sigterm",
        "--record", str(tmp_path / "out.mp4"), "--record-motion", str(tmp_path / "motion.track"),
        "--dial", "smirk=0.2", "--intensity", "head=0.5", "--smoothing", "0.3",
        "--seeded", "0.125", "--device", "cpu", "--engine", "torch",
    ])

    def terminate_after_two_frames() -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while len(vcam.frames) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_after_two_frames)
    killer.start()
    assert args.run(args) == 0
    killer.join()
    assert vcam.closed and len(vcam.frames) >= 2
    assert frames_in(tmp_path / "out.mp4") >= 2
    track = load_motion_track(tmp_path / "motion.track")
    assert len(track.motion) >= 2
    np.testing.assert_allclose(track.edit[0], edit_vector({"smirk": 0.2}))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was put back


def test_live_recording_keeps_real_time(tmp_path):
    recorder = RecorderSink(tmp_path / "paced.mp4", fps=10, size=(64, 64))
    for value, captured_at in ((0, 5.0), (80, 5.1), (160, 5.12), (240, 5.3)):  # one too early, then a gap
        frame = np.full((64, 64, 3), value, dtype=np.uint8)
        recorder.write(LiveFrame(output=frame, driving=frame, face_box=None, face_found=False,
                                 captured_at=captured_at))
    recorder.close()
    assert frames_in(tmp_path / "paced.mp4") == 4  # slots 0, 1, 2 (the gap, filled), 3


# ----- avatars ----------------------------------------------------------------------------

def test_avatars_switch_and_paste_back_on_a_canvas_of_fixed_size(animator):
    config = AvatarConfig(auto_crop=False, output_size=(640, 360))
    avatars = AvatarList()
    canvas = AvatarCanvas(config, animator.device)
    photo = data.astronaut()
    first = avatars.add(prepare_portrait(photo, "astronaut", config))
    second = avatars.add(prepare_portrait(photo[:, :400], "narrow", config))
    same = avatars.add(prepare_portrait(photo, "again", config))
    assert (first, second, same) == (0, 1, 2)
    encoded = [avatars.encoding(animator, portrait) for portrait in avatars.portraits]
    assert encoded[same] is encoded[first]  # the same crop is encoded once
    avatars.select(second)
    output = canvas.compose(canvas.place(avatars.current(), encoded[second]), torch.zeros(1, 3, 512, 512))
    assert output.shape == (360, 640, 3) and output.dtype == np.uint8 and canvas.output_size == (640, 360)
    assert avatars.remove(first) == 0
    assert [p.name for p in avatars.portraits] == ["narrow", "again"] and avatars.current().name == "narrow"


class SourceEncoderRuns:
    """How often a real engine's source encoder ran (once per avatar it encodes): its own method, counted."""

    def __init__(self, animator: Animator, monkeypatch) -> None:
        self.count = 0
        real = animator.engine.encode_source

        def counted(inputs):
            self.count += 1
            return real(inputs)

        monkeypatch.setattr(animator.engine, "encode_source", counted)


def start_and_stop(animator: Animator, avatars: AvatarList) -> None:
    """A session over `avatars` until it has started (every avatar encoded, the engine warmed up)."""
    events = Events()
    session = LiveSession(LiveConfig(track=False), animator, ScriptedSource(), on_event=events, avatars=avatars)
    session.start()
    try:
        wait_for(lambda: events.of(Started) or session.error, what="the session to start")
    finally:
        session.stop()
    assert session.error is None, events


def test_a_new_session_or_a_return_to_the_engine_before_encodes_no_avatar_again(monkeypatch):
    """The window's avatar list outlives its sessions and keeps the encodings of the current and the
    previous engine: a new input on the same engine, or a switch back to the engine before (made
    anew, as the window does), encodes nothing; an engine older than that encodes again."""
    config = AvatarConfig(auto_crop=False)
    avatars = AvatarList()
    for image, name in ((data.astronaut(), "astronaut"), (np.ascontiguousarray(data.astronaut()[:, ::-1]), "flipped")):
        avatars.add(prepare_portrait(image, name, config))
    runs = []
    for seed in (0, 0, 1, 0, 2, 1):  # A, A (a new input), B, back to A, C, B (two engines ago)
        animator = Animator(create_engine(EngineConfig(backend="torch", device="cpu", seeded=True, width=0.125,
                                                       seed=seed)))
        encoder = SourceEncoderRuns(animator, monkeypatch)
        start_and_stop(animator, avatars)
        runs.append(encoder.count)
    assert runs == [2, 0, 2, 0, 2, 2]


def test_weights_replaced_at_the_same_path_encode_the_avatars_again(tmp_path, monkeypatch):
    """A checkpoint overwritten in place (a fine-tune saved over the old file) is other weights: the
    encodings the old file made must not be shown with the new one."""
    from liveanim.model import LIAX
    from liveanim.model.seeded import seed_parameters_

    avatars = AvatarList()
    avatars.add(prepare_portrait(data.astronaut(), "astronaut", AvatarConfig(auto_crop=False)))
    weights = tmp_path / "finetuned.pt"
    runs = []
    for written_seed in (0, None, 1):  # a file, the same file again, another file saved at its path
        if written_seed is not None:
            torch.save(seed_parameters_(LIAX(0.125), written_seed).state_dict(), weights)
        animator = Animator(create_engine(EngineConfig(backend="torch", device="cpu", weights=weights)))
        encoder = SourceEncoderRuns(animator, monkeypatch)
        start_and_stop(animator, avatars)
        runs.append(encoder.count)
    assert runs == [1, 0, 1]


def test_device_paste_back_matches_the_numpy_one():
    """The GPU path, run here on the CPU: the same blend as `paste_back`, within resampling."""
    canvas = data.astronaut()
    box = CropBox(150, 40, 200)
    face = cv2.resize(canvas[60:260, 120:320], (512, 512), interpolation=cv2.INTER_CUBIC)
    rendered = torch.from_numpy(face).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = _paste_on_device(_device_canvas(canvas, box, 0.1, torch.device("cpu")), rendered, box)
    theirs = paste_back(canvas, face, box, 0.1)
    difference = np.abs(ours.astype(int) - theirs)
    assert ours.shape == theirs.shape and difference.mean() < 1.0 and np.percentile(difference, 99) < 8


def test_a_broken_pyvirtualcam_install_is_reported_not_fatal(monkeypatch):
    """An ImportError must become the actionable 'no virtual camera' error that the loop survives."""
    import sys

    from liveanim.errors import VirtualCameraUnavailable

    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # makes `import pyvirtualcam` fail
    with pytest.raises(VirtualCameraUnavailable, match="pip install pyvirtualcam"):
        VirtualCameraSink((512, 512), 30.0)


# ----- on a GPU ---------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_on_a_gpu_every_frame_is_pasted_back_from_its_own_finished_render():
    """On a GPU, motion, render and paste-back run on three threads and CUDA streams. Every
    delivered frame must still be the paste-back of its own render, finished: a missing wait
    between the streams shows an earlier frame's image, or a half-written one.

    Two renders of the same input differ a little on a GPU (seen on an H100 in these uncompiled
    graphs: up to 8 of 255, 0.1 on average), so each frame is compared with every frame's
    reference: its own must be the nearest, and near.
    """
    config = EngineConfig(backend="torch", device="cuda", precision="fp32", seeded=True, width=0.125, compile=False,
                          cuda_graphs=True)
    animator = Animator(create_engine(config))
    source = ScriptedSource(live=False)  # every frame is rendered and checked
    delivered: queue.Queue[LiveFrame] = queue.Queue()
    session = LiveSession(LiveConfig(track=False, motion=MotionConfig(smoothing=0.0),
                                     avatars=AvatarConfig(auto_crop=False)), animator, source,
                          on_event=frames_to(delivered.put))
    session.add_avatar(data.astronaut(), "astronaut")
    session.start()
    try:
        for step in range(40):  # the head turns from -24 to 23 degrees: no two frames alike
            source.push(head_pose(2, angle=1.2 * step - 24.0), float(step))
        source.close()
        assert session.wait(TIMEOUT_S) and session.error is None
    finally:
        session.stop()
    frames = list(delivered.queue)
    assert len(frames) == 40
    portrait = session.avatars.current()
    canvas = AvatarCanvas(session.config.avatars, animator.device)
    avatar = canvas.place(portrait, session.avatars.encoding(animator, portrait))
    references = torch.stack([torch.from_numpy(canvas.compose(avatar, animator.render(
        avatar.encoded, torch.from_numpy(frame.motion)[None].cuda(), torch.from_numpy(frame.edit)[None].cuda())))
        for frame in frames]).float()
    for own, frame in enumerate(frames):
        distances = (references - torch.from_numpy(frame.output).float()).abs().mean(dim=(1, 2, 3))
        others = torch.cat([distances[:own], distances[own + 1:]])
        assert distances.argmin() == own and distances[own] < 0.5, \
            f"frame {frame.index}: {distances[own]:.3f} from its own render, {others.min():.3f} from the nearest other"


# ----- nothing lost, nothing silent --------------------------------------------------------

def test_a_killed_cli_leaves_a_recording_and_a_motion_track_that_play(tmp_path):
    video = driving_video(tmp_path / "drive.mp4", frames=4, fps=2)  # a fragment every 2 frames
    out, motion = tmp_path / "out.mp4", tmp_path / "out.motion"
    live = start_cli("live", "--video", str(video), "--loop", "--no-track", "--record", str(out),
                     "--record-motion", str(motion))
    try:
        wait_for(lambda: playable_frames(out) >= 2 or live.poll() is not None, CLI_TIMEOUT_S,
                 "a recording that plays while it is being written")
    finally:
        live.kill()
    output = live.communicate()[0]
    assert live.returncode == -signal.SIGKILL, output
    assert playable_frames(out) >= 2
    assert len(load_motion_track(motion).motion) >= 1


def test_ctrl_c_again_and_again_while_stopping_cannot_break_the_shutdown(tmp_path):
    video = driving_video(tmp_path / "drive.mp4", frames=4, fps=2)
    out, motion, stats = tmp_path / "out.mp4", tmp_path / "out.motion", tmp_path / "stats.json"
    live = start_cli("live", "--video", str(video), "--loop", "--no-track", "--record", str(out),
                     "--record-motion", str(motion), "--stats-json", str(stats))
    try:
        wait_for(lambda: playable_frames(out) >= 2 or live.poll() is not None, CLI_TIMEOUT_S, "a recording")
        live.send_signal(signal.SIGINT)
        while live.poll() is None:  # a second Ctrl-C 5 ms later, and more, until it has ended
            time.sleep(0.005)  # (50 ms came after a quick stop had ended once, on 2 busy cores)
            live.send_signal(signal.SIGINT)
    finally:
        live.kill()
    output = live.communicate()[0]
    # 0, or 130 as a shell reports it: main's KeyboardInterrupt exit, or the interpreter ending
    # itself by SIGINT when one comes after everything was finished and the handlers put back
    assert live.returncode in (0, 130, -signal.SIGINT), output
    assert "SIGINT: already stopping" in output
    assert playable_frames(out) >= 2 and len(load_motion_track(motion).motion) >= 1
    report = json.loads(stats.read_text())
    assert report["finished"] and report["frames"] >= 1 and report["failed_outputs"] == []


def test_a_full_disk_stops_the_recording_only_and_keeps_what_it_wrote(animator, tmp_path):
    """A real full disk (a small tmpfs filled up mid-recording); see the next test for the same
    error forced where nothing can be mounted."""
    video = driving_video(tmp_path / "drive.mp4", frames=4, fps=2)
    events = Events()
    delivered: queue.Queue[LiveFrame] = queue.Queue()
    with mounted_tmpfs(tmp_path / "disk", size_kb=4096) as disk:
        out = disk / "out.mp4"
        session = LiveSession(LiveConfig(track=False, record=out), animator, VideoFileSource(video, loop=True),
                              on_event=lambda event: (events(event), frames_to(delivered.put)(event)))
        session.start()
        try:
            wait_for(lambda: playable_frames(out) >= 2, CLI_TIMEOUT_S, "a recording")
            fill_up(disk)
            wait_for(lambda: events.of(RecordingFailed), CLI_TIMEOUT_S, "the recording to fail")
            after = delivered.qsize()
            wait_for(lambda: delivered.qsize() >= after + 2, CLI_TIMEOUT_S, "frames after the failure")
        finally:
            session.stop()
        [failed] = events.of(RecordingFailed)
        assert failed.path == out and "disk is full" in failed.reason and failed.frames >= 2
        assert session.error is None and not events.of(RecordingStopped)
        assert playable_frames(out) >= 2


def test_a_recording_write_error_ends_the_cli_with_exit_2_naming_the_file(tmp_path):
    """The same as a full disk through the real writer, on any machine: the recording may not grow
    past what it holds once it plays (RLIMIT_FSIZE: EFBIG instead of ENOSPC). The motion track
    is another output asked for, so the stream goes on to --max-frames; the exit code says 2."""
    video = driving_video(tmp_path / "drive.mp4", frames=4, fps=2)
    out, motion, stats = tmp_path / "out.mp4", tmp_path / "out.motion", tmp_path / "stats.json"
    limit_once_it_plays = f"""
import os, resource, signal, sys, threading, time
import av
from liveanim.app.cli import main

def plays(path: str) -> bool:
    try:
        with av.open(path) as container:
            return sum(1 for _ in container.decode(video=0)) >= 2
    except (av.error.FFmpegError, OSError):
        return False

def limit() -> None:
    while not plays({str(out)!r}):
        time.sleep(0.05)
    size = os.path.getsize({str(out)!r})
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
threading.Thread(target=limit, daemon=True).start()
sys.exit(main(sys.argv[1:]))
"""
    live = start_cli("live", "--video", str(video), "--loop", "--no-track", "--record", str(out),
                     "--record-motion", str(motion), "--max-frames", "8", "--stats-json", str(stats),
                     code=limit_once_it_plays)
    try:
        output = live.communicate(timeout=3 * CLI_TIMEOUT_S)[0]
    finally:
        live.kill()
    assert live.returncode == 2, output
    assert f"recording {out} stopped after" in output and "File too large" in output
    assert f"live ended with a failed output: the recording {out}" in output
    report = json.loads(stats.read_text())
    assert report["frames"] == 8 and report["failed_outputs"] == [f"the recording {out}"]
    assert len(load_motion_track(motion).motion) == 8  # the loop went on after the failure
    assert playable_frames(out) >= 2


def test_a_read_only_folder_refuses_the_recording_and_the_loop_goes_on(animator, tmp_path):
    video = driving_video(tmp_path / "drive.mp4", frames=2)
    events = Events()
    with mounted_tmpfs(tmp_path / "read-only", size_kb=64, read_only=True) as folder:
        config = LiveConfig(track=False, record=folder / "out.mp4", record_motion=tmp_path / "out.motion")
        session = LiveSession(config, animator, VideoFileSource(video, realtime=False), on_event=events)
        session.start()
        assert session.wait(TIMEOUT_S)
        session.stop()
    [failed] = events.of(RecordingFailed)
    assert failed.path == folder / "out.mp4" and failed.frames == 0 and "Read-only" in failed.reason
    assert "could not start" in failed.message and session.stats.frames == 2
    assert len(load_motion_track(tmp_path / "out.motion").motion) == 2


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the inputs and outputs were checked")


def test_a_missing_camera_fails_before_any_model_work_once_naming_the_cameras(monkeypatch, caplog):
    monkeypatch.setattr(cli_options, "create_engine", no_model)
    with caplog.at_level(logging.INFO):
        assert main(["live", "--camera", "7", *TINY]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("Cannot open camera 7"), errors
    assert "Cameras that open:" in errors[0] or "No camera opens on this machine" in errors[0]


def test_a_missing_camera_names_the_cameras_that_do_open(monkeypatch):
    monkeypatch.setattr(sources, "open_capture", lambda device, api: FakeCapture(5, opens=device in (0, 2)))
    with pytest.raises(CameraError, match=r"Cannot open camera 7.*Cameras that open: 0 \(64x48\), 2 \(64x48\)\."):
        CameraSource(CameraConfig(device=7))
    assert CameraSource(CameraConfig(device=2)).fps == 15.0, "the rate the camera reports, not the one asked for"


def test_outputs_that_cannot_work_fail_before_any_model_work(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(cli_options, "create_engine", no_model)
    register_test_vcam("test-nodriver", fail="No v4l2 loopback device found")
    video = driving_video(tmp_path / "drive.mp4", frames=1)
    (tmp_path / "a-file").write_text("")
    with caplog.at_level(logging.ERROR):
        assert main(["live", "--video", str(video), "--record", str(tmp_path / "a-file" / "out.mp4"), *TINY]) == 2
        assert main(["live", "--video", str(video), "--vcam", "--vcam-backend", "test-nodriver", *TINY]) == 2
    record_error, vcam_error = [record.getMessage() for record in caplog.records]
    assert str(tmp_path / "a-file" / "out.mp4") in record_error
    assert "No v4l2 loopback device found" in vcam_error and "modprobe v4l2loopback" in vcam_error


def test_a_virtual_camera_that_goes_away_ends_the_cli_with_exit_2_naming_it(tmp_path, caplog):
    vcam = register_test_vcam("test-unplugged", unplug_after=2)
    video = driving_video(tmp_path / "drive.mp4", frames=3)
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.INFO):
        assert main(["live", "--video", str(video), "--loop", "--fast", "--no-track", "--vcam", "--vcam-backend",
                     "test-unplugged", "--record", str(out), "--max-frames", "4", *TINY]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors[0].startswith("virtual camera /dev/test-unplugged stopped: device unplugged"), errors
    assert errors[-1] == "live ended with a failed output: the virtual camera /dev/test-unplugged (see above)"
    assert len(vcam.frames) == 2 and playable_frames(out) == 4  # the recording went on to the end


def test_recordings_run_at_the_source_frame_rate_into_a_folder_made_for_them(animator, tmp_path):
    video = driving_video(tmp_path / "drive.mp4", frames=3, fps=12)
    out, motion = tmp_path / "new" / "out.mp4", tmp_path / "new" / "out.motion"
    parser = argparse.ArgumentParser()
    live_cli.register(parser.add_subparsers())
    args = parser.parse_args(["live", "--video", str(video), "--fast", "--no-track", "--record", str(out),
                              "--record-motion", str(motion), *TINY])
    assert args.run(args) == 0
    recorded = probe(out)
    assert recorded.fps == 12 and len(recorded.frames) == 3
    assert load_motion_track(motion).fps == 12.0


def test_soak_script_samples_the_live_process_as_it_runs(tmp_path):
    """scripts/soak.py (the 60-minute and H200 soaks), for a few seconds: `main.py live
    --duration --stats-every` samples memory, threads, FPS and latency, and the script sums up."""
    out = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, "scripts/soak.py", "--minutes", "0.2", "--every", "3", "--size", "128x96",
                             "--fps", "5", "--out", str(out), "--", "--no-track", *TINY],
                            cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    samples = report["live"]["samples"]
    assert len(samples) >= 3 and report["summary"]["samples"] == len(samples)
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
    assert all(s["rss_mb"] > 50 and s["threads"] >= s["python_threads"] >= 1 for s in samples)
    assert samples[-1]["frames"] >= 1 and samples[-1]["gpu_allocated_mb"] is None  # no CUDA here
    assert report["live"]["finished"] and report["exit_code"] == 0 and report["load_average_1min"]
    assert "rss_mb_growth_per_hour" in report["summary"] and report["summary"]["threads_max"] >= 1
