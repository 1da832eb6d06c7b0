"""The live loop end to end on a small seeded model: a driving video made from a real photo,
through tracking, motion, rendering and paste-back, into a virtual camera registered here
(through the real pyvirtualcam.Camera API) and into recordings.

The CPU renders a frame in seconds, so each test delivers only a few frames.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import pyvirtualcam
import torch
from skimage import data

from engines import EngineConfig, create_engine
from liveanim.cli import live as live_cli
from liveanim.errors import CameraError
from liveanim.face import CropBox, paste_back
from liveanim.motion.controller import MotionConfig
from liveanim.motion.dials import DIALS_BY_NAME, edit_vector
from liveanim.motion.neutral import NeutralConfig
from liveanim.pipeline.animator import Animator
from liveanim.pipeline.avatars import AvatarBank, AvatarConfig, _device_canvas, _paste_on_device
from liveanim.pipeline.live import LiveConfig, LiveFrame, LiveSession, _FrameQueue
from liveanim.pipeline.sinks import RecorderSink, VirtualCameraConfig, VirtualCameraSink, load_motion_track
from liveanim.pipeline.sources import CameraConfig, CameraSource, ImageFolderSource, VideoFileSource
from liveanim.pipeline.video import VideoReader, VideoWriter, write_image

FACE_CENTRE = (225.0, 115.0)  # (x, y) of the astronaut's face
TIMEOUT_S = 90.0


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


def register_test_vcam(name: str, fail: str | None = None) -> type:
    """A pyvirtualcam backend that keeps what it is sent (or fails to start, like a missing driver)."""

    class Backend:
        frames: list[np.ndarray] = []
        opened: list[dict] = []
        closed = False

        def __init__(self, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw) -> None:
            if fail:
                raise RuntimeError(fail)
            type(self).opened.append(dict(width=width, height=height, fps=fps, fourcc=fourcc))

        def send(self, frame: np.ndarray) -> None:
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

    def frames(self, on_status=None):
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
        self.session = LiveSession(config, animator, self.source, on_frame=self.delivered.put)
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
    statuses: list[str] = []
    config = LiveConfig(vcam=True, virtual_camera=VirtualCameraConfig(backend="test-flow"),
                        record=tmp_path / "out.mp4", record_motion=tmp_path / "motion.npz")
    session = LiveSession(config, animator, VideoFileSource(video, realtime=False), on_frame=seen.append,
                          on_status=statuses.append)
    session.start()
    assert session.wait(TIMEOUT_S), "the session did not end with the video"
    session.stop()

    assert session.error is None, statuses
    assert statuses[0].startswith("preparing the engine") and "engine ready in" in statuses[1]
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
    track = load_motion_track(tmp_path / "motion.npz")
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
        return 0.0

    def release(self) -> None:
        self.released = True


def test_camera_failing_mid_stream_is_reopened_with_backoff():
    captures = [FakeCapture(3), FakeCapture(0, opens=False), FakeCapture(2)]
    made = iter(captures)
    source = CameraSource(CameraConfig(read_failures=2, backoff_s=0.01), lambda device, api: next(made))
    statuses: list[str] = []
    frames = []
    for frame, captured_at in source.frames(statuses.append):
        frames.append(frame)
        if len(frames) == 5:
            source.close()
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)
    assert all(capture.released for capture in captures)
    assert any("reopening" in status for status in statuses) and statuses[-1] == "camera 0 is back"


def test_a_camera_that_cannot_open_says_what_to_do():
    source = CameraSource(CameraConfig(device=3), lambda device, api: FakeCapture(0, opens=False))
    with pytest.raises(CameraError, match="--camera"):
        next(source.frames())


def test_image_folder_plays_in_name_order_once_or_looped(tmp_path):
    for value in (2, 0, 1):
        write_image(tmp_path / f"frame_{value}.png", np.full((8, 8, 3), value, dtype=np.uint8))
    once = [frame[0, 0, 0] for frame, _ in ImageFolderSource(tmp_path, realtime=False).frames()]
    assert once == [0, 1, 2]
    looped = ImageFolderSource(tmp_path, fps=100.0, loop=True)
    stamps = []
    for _, captured_at in looped.frames():
        stamps.append(captured_at)
        if len(stamps) == 7:
            looped.close()
    assert len(stamps) == 7 and stamps[-1] - stamps[0] >= 6 / 100.0 - 1e-3  # paced at its rate


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
                          on_frame=slow_output)
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
    statuses: list[str] = []
    config = LiveConfig(vcam=True, virtual_camera=VirtualCameraConfig(backend="test-missing"), track=False,
                        record=tmp_path / "out.mp4")
    session = LiveSession(config, animator, VideoFileSource(video, realtime=False), on_status=statuses.append)
    session.add_avatar(data.astronaut(), "astronaut")
    session.start()
    assert session.wait(TIMEOUT_S)
    session.stop()
    message = next(status for status in statuses if "virtual camera" in status.lower())
    assert "No v4l2 loopback device found" in message
    assert "modprobe v4l2loopback" in message or "OBS" in message
    assert session.error is None
    assert frames_in(tmp_path / "out.mp4") == 2


def test_sigterm_stops_the_cli_and_finalizes_the_recording(tmp_path):
    vcam = register_test_vcam("test-sigterm")
    video = driving_video(tmp_path / "drive.mp4", frames=4)
    parser = argparse.ArgumentParser()
    live_cli.register(parser.add_subparsers())
    args = parser.parse_args([
        "live", "--video", str(video), "--loop", "--fast", "--no-track", "--vcam", "--vcam-backend", "test-sigterm",
        "--record", str(tmp_path / "out.mp4"), "--record-motion", str(tmp_path / "motion.npz"),
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
    track = load_motion_track(tmp_path / "motion.npz")
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
    bank = AvatarBank(animator, AvatarConfig(auto_crop=False, output_size=(640, 360)))
    photo = data.astronaut()
    first = bank.add(photo, "astronaut")
    second = bank.add(photo[:, :400], "narrow")
    assert (first, second) == (0, 1) and bank.output_size == (640, 360)
    same = bank.add(photo, "again")
    assert bank._avatars[same].encoded is bank._avatars[first].encoded  # encoded once
    bank.select(second)
    rendered = torch.zeros(1, 3, 512, 512)
    output = bank.compose(bank.current(), rendered)
    assert output.shape == (360, 640, 3) and output.dtype == np.uint8
    bank.remove(first)
    assert bank.names == ["narrow", "again"] and bank.current().name == "narrow"


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
    config = EngineConfig(backend="torch", device="cuda", seeded=True, width=0.125, compile=False, cuda_graphs=True)
    animator = Animator(create_engine(config))
    source = ScriptedSource(live=False)  # every frame is rendered and checked
    delivered: queue.Queue[LiveFrame] = queue.Queue()
    session = LiveSession(LiveConfig(track=False, motion=MotionConfig(smoothing=0.0),
                                     avatars=AvatarConfig(auto_crop=False)), animator, source, on_frame=delivered.put)
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
    avatar = session.avatars.current()
    references = torch.stack([torch.from_numpy(session.avatars.compose(avatar, animator.render(
        avatar.encoded, torch.from_numpy(frame.motion)[None].cuda(), torch.from_numpy(frame.edit)[None].cuda())))
        for frame in frames]).float()
    for own, frame in enumerate(frames):
        distances = (references - torch.from_numpy(frame.output).float()).abs().mean(dim=(1, 2, 3))
        others = torch.cat([distances[:own], distances[own + 1:]])
        assert distances.argmin() == own and distances[own] < 0.5, \
            f"frame {frame.index}: {distances[own]:.3f} from its own render, {others.min():.3f} from the nearest other"
