"""The live loop: camera in, animated avatar out, in five threads.

    capture --[queue]--> motion (crop, motion code) --[queue]--> render (animate, render)
                          |  ^                                        |
            newest frame  |  |  newest crop box                    [queue]
                          v  |                                        v
              track (find the face, smooth its box)       outputs (paste back, then virtual
                                                          camera, recording, preview)

Face tracking runs beside the motion thread, not before it: mediapipe costs more than the
motion encoder (12-13 ms of CPU a frame, where a frame lasts 16.7 ms at 60 fps;
docs/bench/face_tracking_after.json), and in sequence the two could not keep up with 60 fps.
The tracker always works on the newest frame the motion thread has taken and publishes its
smoothed crop box; the motion thread crops each frame with the newest box there is and never
waits for the tracker, except until it has found a first face (the frames before it are
faceless, as on a frame where the face is lost). So a frame's box may come from the frame
before; the frame, that box and its motion code travel together to the outputs. Once it
follows a face, the tracker starts one track per motion code the renderer takes: where the
renderer is the slow stage (a CPU) the motion thread reads frames ahead that are then dropped,
and tracking each of them too would take the renderer's CPU.

The three GPU stages keep the GPU busy together (the motion and output threads each on a CUDA
stream of their own): the next frame's motion code is computed and the last frame pasted back
and copied to the host while the current frame renders, so the render thread only ever waits
for its own work.

Each queue holds one frame by default. With a live source a full queue drops its oldest
frame: a slow stage then shows the newest face rather than falling further and further
behind (latency stays bounded; drops are counted). Deeper queues add latency and no speed:
on an H100 fed 60 fps, 2-frame queues gave the same 57 fps as 1-frame ones with 16 ms more
latency (docs/performance.md). A file read "as fast as possible" is
processed losslessly instead. Nothing in the loop is fatal except losing the source for
good: a failed frame is skipped, a failed output is switched off and reported.

Everything the session has to tell (started, each frame, an output on, off or failed, the
source lost, the engine's progress while it optimizes, an error) goes to one callback as typed
events (`liveanim.pipeline.events`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from liveanim.errors import FaceDetectionUnavailable, LiveAnimError, UsageError
from liveanim.face import CropBox, FaceTracker, TrackerConfig, centre_square, crop_image
from liveanim.motion.controller import Dials, MotionConfig, MotionController
from liveanim.pipeline.animator import Animator
from liveanim.pipeline.avatar_list import AvatarList
from liveanim.pipeline.avatars import AvatarConfig, Portrait, default_avatar, prepare_portrait, uncropped_event
from liveanim.pipeline.canvas import AvatarCanvas, ShownAvatar
from liveanim.pipeline.events import (Calibrating, EnginePreparing, EventCallback, FrameDelivered, FrameFailed,
                                      OptimizingReports, SessionEvent, SessionFailed, Started, Stopped,
                                      TrackingUnavailable, log_event)
from liveanim.pipeline.metrics import LiveStats, Metrics, MetricsConfig
from liveanim.pipeline.sinks import (LiveFrame, MotionRecorder, RecorderSink, Sink, VirtualCameraConfig,
                                     VirtualCameraSink, recording_failed_to_start, virtual_camera_failed_to_start)
from liveanim.pipeline.sources import FrameSource

log = logging.getLogger(__name__)

__all__ = ["LiveConfig", "LiveFrame", "LiveSession", "LiveStats"]

_END = object()  # end of the stream, passed down the queues
_JOIN_TIMEOUT_S = 30.0
_SINK_ORDER = ("vcam", "record", "motion")  # the call's video first


@dataclass(frozen=True)
class LiveConfig:
    """Everything about a live session that is fixed when it starts. Outputs run at the
    source's frame rate (a camera's as it reports it, a video's own).

    queue_size:     frames each queue holds between two stages.
    track:          follow the face; False crops the centre square of every frame (no mediapipe).
    tracker:        how the face crop follows the face.
    motion:         neutral capture, smoothing, face-lost hold and ease.
    avatars:        cropping, paste-back and output size.
    vcam:           start the virtual camera with the session.
    virtual_camera: which virtual camera backend and device.
    record:         an mp4 to record the output into from the start.
    record_motion:  a motion track file to write the rendered motion into, for replay.
    max_frames:     end after delivering this many frames (None: until stopped or the source ends).
    metrics:        statistics window and log interval.
    """

    queue_size: int = 1
    track: bool = True
    tracker: TrackerConfig = TrackerConfig()
    motion: MotionConfig = MotionConfig()
    avatars: AvatarConfig = AvatarConfig()
    vcam: bool = False
    virtual_camera: VirtualCameraConfig = VirtualCameraConfig()
    record: Path | None = None
    record_motion: Path | None = None
    max_frames: int | None = None
    metrics: MetricsConfig = MetricsConfig()

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"need queue_size >= 1, got {self.queue_size}")


@dataclass(frozen=True)
class _Track:
    """The tracker's newest word: on frame `index` (of this shape), the crop box (None until a
    first face) and whether a face was found."""

    index: int
    shape: tuple[int, ...]
    box: CropBox | None
    found: bool


@dataclass(frozen=True, eq=False)
class _Asked:
    """What the tracker is asked to follow: the newest frame the motion thread took, and how many
    motion codes the renderer has taken so far."""

    index: int = -1
    frame: np.ndarray | None = None
    rendered: int = 0


@dataclass(frozen=True)
class _Coded:
    """A captured frame, the box its crop was taken with, and the crop's motion code (None: no face)."""

    index: int
    frame: np.ndarray
    captured_at: float
    box: CropBox | None
    found: bool
    code: np.ndarray | None


@dataclass(frozen=True, eq=False)
class _Rendered:
    """A rendered frame, before paste-back, and what it was rendered from."""

    coded: _Coded
    avatar: ShownAvatar
    motion: np.ndarray
    edit: np.ndarray
    image: torch.Tensor  # (1, 3, 512, 512) on the engine's device, finished


class _FrameQueue:
    """A bounded hand-over between two threads: drops its oldest item when full, or makes the
    producer wait (lossless). `close()` wakes everyone; afterwards `put` refuses and `get` drains.
    """

    def __init__(self, size: int, drop_oldest: bool, on_drop: Callable[[], None]) -> None:
        self._items: deque[Any] = deque()
        self._size = size
        self._drop_oldest = drop_oldest
        self._on_drop = on_drop
        self._ready = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> bool:
        """Queue `item`; False if the queue was closed."""
        with self._ready:
            while not self._drop_oldest and len(self._items) >= self._size and not self._closed:
                self._ready.wait()
            if self._closed:
                return False
            if len(self._items) >= self._size:
                self._items.popleft()
                self._on_drop()
            self._items.append(item)
            self._ready.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any | None:
        """The oldest item, or None on timeout or once closed and empty."""
        with self._ready:
            self._ready.wait_for(lambda: self._items or self._closed, timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._ready.notify_all()
            return item

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class _Newest:
    """The newest of a stream of values, from the threads that change it to one that waits for it:
    each replaces the one before (nothing queues, so nothing is dropped). `close()` wakes every waiter."""

    def __init__(self, value: Any = None) -> None:
        self._value = value
        self._ready = threading.Condition()
        self._closed = False

    def publish(self, value: Any) -> None:
        self.update(lambda _: value)

    def update(self, change: Callable[[Any], Any]) -> None:
        """Replace the newest value with `change(newest)`, in one step however many threads update it."""
        with self._ready:
            self._value = change(self._value)
            self._ready.notify_all()

    def wait(self, ready: Callable[[Any], bool]) -> Any:
        """The newest value once `ready(value)` holds or once closed (then whatever is newest, None if nothing)."""
        with self._ready:
            self._ready.wait_for(lambda: self._closed or ready(self._value))
            return self._value

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class LiveSession:
    """Runs the live loop over an animator and a source, once (start, then stop); every setter
    is safe to call from any thread, before or during the run."""

    def __init__(self, config: LiveConfig, animator: Animator, source: FrameSource,
                 on_event: EventCallback | None = None, avatars: AvatarList | None = None) -> None:
        """on_event: gets every event (each delivered frame as `FrameDelivered`, on the output
                  thread, after every output), on the session's threads; by default they are logged.
        avatars:  the avatars to show, shared with the sessions before and after this one (the
                  window's): its order and selection are followed as they change, and the
                  encodings it keeps are used; by default a list of this session's own.
        """
        self.config = config
        self.animator = animator
        self.source = source
        self._on_event = on_event if on_event is not None else (lambda event: log_event(log, event))
        self._event_failures = 0
        self._metrics = Metrics(config.metrics)
        self._controller = MotionController(config.motion)
        self._avatars = avatars if avatars is not None else AvatarList()
        self._canvas = AvatarCanvas(config.avatars, animator.device)
        self._shown: dict[Portrait, ShownAvatar] = {}  # each portrait as placed on this session's canvas
        self._shown_lock = threading.Lock()
        self._lock = threading.Lock()  # serializes the controller's setters with its per-frame update
        self._inbox = _FrameQueue(config.queue_size, source.live, self._metrics.dropped)
        self._coded = _FrameQueue(config.queue_size, source.live, self._metrics.dropped)
        self._outbox = _FrameQueue(config.queue_size, source.live, self._metrics.dropped)
        self._asked = _Newest(_Asked())  # for the tracker, from the motion and render threads
        self._tracks = _Newest()  # _Track: the tracker's newest crop box, for the motion thread
        self._requests: deque[tuple[str, Any]] = deque()  # ("vcam", bool), ("record" or "motion", Path | None)
        if config.vcam:
            self.set_vcam(True)
        if config.record is not None:
            self.set_recording(config.record)
        if config.record_motion is not None:
            self._requests.append(("motion", config.record_motion))
        self._threads: list[threading.Thread] = []
        self._finished = threading.Event()
        self._ready = threading.Event()  # set once the engine has run: capture starts only then
        self._stopped = False
        self._error: LiveAnimError | None = None
        self._fixed_crop = not config.track
        self._last_render: _Rendered | None = None  # on the render thread
        self._last_output: tuple[torch.Tensor, np.ndarray] | None = None  # on the output thread
        self._frame_failures = 0
        self._optimizing = OptimizingReports()  # on the render thread

    # ----- public API -------------------------------------------------------------------

    def start(self) -> None:
        """Start the five threads and return; the default avatar is added (on the render thread) if
        none was. Avatars listed before (a shared list's) are encoded first, where this engine has
        no encodings of them yet, and the first one fixes the output size."""
        if self._threads:
            raise UsageError("this live session has already been started; make a new one")
        for portrait in self._avatars.portraits:
            self._show(portrait)
        for name, loop in (("capture", self._capture_loop), ("track", self._track_loop),
                           ("motion", self._motion_loop), ("render", self._render_loop),
                           ("output", self._output_loop)):
            self._threads.append(threading.Thread(target=self._guarded, args=(loop,), name=f"live-{name}",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop every thread and finalize every file; safe to call twice or from a callback."""
        if self._stopped:
            return
        self._stopped = True
        self._halt()
        if not self._threads:
            self._finished.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(_JOIN_TIMEOUT_S)
                if thread.is_alive():
                    log.warning("%s did not stop within %.0f s", thread.name, _JOIN_TIMEOUT_S)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the session ends by itself (source over, max_frames, fatal error) or is
        stopped, with every output finalized; False on timeout."""
        return self._finished.wait(timeout)

    @property
    def error(self) -> LiveAnimError | None:
        """What ended the session, if it ended on an error (e.g. the camera cannot be opened)."""
        return self._error

    @property
    def stats(self) -> LiveStats:
        return self._metrics.snapshot()

    @property
    def avatars(self) -> AvatarList:
        """The avatars shown: select or remove through it, also mid-stream."""
        return self._avatars

    @property
    def dials(self) -> Dials:
        with self._lock:
            return self._controller.dials

    def set_dials(self, dials: Dials) -> None:
        """Every dial at once (a session opened for dials set before it); a ValueError changes none."""
        with self._lock:
            self._controller.set_dials(dials)

    def set_edit(self, edit: np.ndarray) -> None:
        """The dials' (40,) offsets e."""
        with self._lock:
            self._controller.set_edit(edit)

    def set_intensity(self, group: str, value: float) -> None:
        with self._lock:
            self._controller.set_intensity(group, value)

    def set_smoothing(self, amount: float) -> None:
        with self._lock:
            self._controller.set_smoothing(amount)

    def calibrate(self) -> None:
        """Take the performer's neutral pose from the next still frames."""
        with self._lock:
            self._controller.calibrate()
        self._emit(Calibrating())

    def add_avatar(self, image_rgb: np.ndarray, name: str) -> int:
        """Crop and encode a uint8 RGB portrait and append it (takes a while; the loop goes on
        meanwhile); its index. Where faces cannot be looked for, its centre square is used as it
        is (and AvatarUncropped told)."""
        portrait = prepare_portrait(image_rgb, name, self.config.avatars)
        uncropped = uncropped_event([portrait])
        if uncropped is not None:
            self._emit(uncropped)
        return self.add_portrait(portrait)

    def add_portrait(self, portrait: Portrait) -> int:
        """Append a prepared portrait, encoded for this session's engine first (slow: do it beside the
        loop), so the loop never waits for it; its index."""
        self._show(portrait)
        return self._avatars.add(portrait)

    def set_vcam(self, enabled: bool) -> None:
        """Start or stop the virtual camera; it reports back as VirtualCameraOn/Off/Failed."""
        self._requests.append(("vcam", enabled))

    def set_recording(self, path: Path | None) -> None:
        """Record the output into `path` (finishing any current recording), or stop with None; it
        reports back as RecordingStarted/Stopped/Failed."""
        self._requests.append(("record", path))

    # ----- the per-frame step -----------------------------------------------------------

    def _read_motion(self, index: int, frame: np.ndarray, captured_at: float) -> _Coded:
        """Read the motion code a_d from the frame's crop."""
        box, found = self._locate(index, frame)
        code = None
        if found:
            with self._metrics.stage("motion"):
                code = self.animator.motion(crop_image(frame, box))[0].cpu().numpy()
        return _Coded(index, frame, captured_at, box, found, code)

    def _render_frame(self, coded: _Coded) -> _Rendered:
        """Make the motion and render:

            motion = smooth(a_d - a_0) * intensity          (held, then eased to 0, when no face)
            z_target = z_s + (motion + a_s + e) @ Q.T
        """
        with self._lock:
            motion = self._controller.update(coded.code, coded.captured_at)
            edit = self._controller.edit
        avatar = self._show(self._avatars.current())
        image = self._unchanged_render(avatar, motion, edit)
        if image is None:
            with self._metrics.stage("render"):
                image = self.animator.render(avatar.encoded, self._on_device(motion), self._on_device(edit))
                _synchronize(image)
        self._last_render = _Rendered(coded, avatar, motion, edit, image)
        return self._last_render

    def _compose(self, rendered: _Rendered) -> LiveFrame:
        """Paste the rendered face back into the avatar's picture (on the output thread, so the
        render thread goes on with the next frame meanwhile)."""
        last = self._last_output
        if last is not None and last[0] is rendered.image:
            output = last[1]  # a held face: the same render, pasted back already
        else:
            with self._metrics.stage("compose"):
                _used_on_this_stream(rendered.image)
                output = self._canvas.compose(rendered.avatar, rendered.image)
            output.flags.writeable = False  # may be shown again while the face is held
            self._last_output = (rendered.image, output)
        coded = rendered.coded
        return LiveFrame(output=output, driving=coded.frame, face_box=coded.box, face_found=coded.found,
                         index=coded.index, captured_at=coded.captured_at, motion=rendered.motion,
                         edit=rendered.edit)

    def _locate(self, index: int, frame: np.ndarray) -> tuple[CropBox | None, bool]:
        """The driving crop and whether a face is in it: the tracker's newest word, once it has found
        a face in a frame of this shape; before, its word on this frame (or a newer one). With a
        fixed crop, the centre square, always with a face."""
        if not self._fixed_crop:
            track = self._tracks.wait(lambda track: track is not None and (
                track.index >= index or (track.box is not None and track.shape == frame.shape)))
            if not self._fixed_crop:  # it is set while waiting where the tracker finds faces cannot be found
                if track is None or track.shape != frame.shape:
                    return None, False
                return track.box, track.found
        return centre_square(frame.shape), True

    def _show(self, portrait: Portrait) -> ShownAvatar:
        """The portrait as this session shows it: encoded (or its kept encoding) and placed on the
        canvas, once. Portraits no longer in the list are dropped then, with their canvases."""
        with self._shown_lock:
            shown = self._shown.get(portrait)
        if shown is not None:
            return shown
        shown = self._canvas.place(portrait, self._avatars.encoding(self.animator, portrait))
        listed = set(self._avatars.portraits)
        with self._shown_lock:
            self._shown = {kept: placed for kept, placed in self._shown.items() if kept in listed}
            return self._shown.setdefault(portrait, shown)

    def _unchanged_render(self, avatar: ShownAvatar, motion: np.ndarray, edit: np.ndarray) -> torch.Tensor | None:
        """The last rendered image if it was made from the same avatar, motion and edit (a held
        or rested face): the renderer is deterministic, so it need not run again."""
        last = self._last_render
        same = (last is not None and last.avatar is avatar and np.array_equal(last.motion, motion)
                and np.array_equal(last.edit, edit))
        return last.image if same else None

    def _on_device(self, vector: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(vector)[None].to(self.animator.device)

    # ----- threads ----------------------------------------------------------------------

    def _guarded(self, loop: Callable[[], None]) -> None:
        """Run a thread's loop; an error that escapes it ends the session with a message.

        A normal end needs no halt: the end of the stream travels down the queues.
        """
        try:
            loop()
        except LiveAnimError as error:
            self._fail(error)
        except Exception as error:
            log.exception("live loop failed")
            self._fail(LiveAnimError(f"the live loop failed: {error!r}"))

    def _fail(self, error: LiveAnimError) -> None:
        """End the session on `error` (the first one is kept and reported)."""
        if self._error is None:
            self._error = error
            self._emit(SessionFailed(error))
        self._halt()

    def _capture_loop(self) -> None:
        try:
            self._ready.wait()  # frames captured while the engine warms up would only be dropped
            if self._inbox.closed:
                return
            for index, (frame, captured_at) in enumerate(self.source.frames(self._emit)):
                if not self._inbox.put((index, frame, captured_at)):
                    return
        finally:
            self._inbox.put(_END)

    def _track_loop(self) -> None:
        """Follow the face on the newest frame the motion thread has taken; publish each crop box."""
        try:
            tracker = self._start_tracker()
            if tracker is None:
                return
            with tracker:
                last, rendered = _Track(-1, (), None, False), 0
                while True:
                    asked = self._asked.wait(lambda now: _due(now, last, rendered))
                    if not _due(asked, last, rendered):
                        return  # closed, and nothing more is due
                    rendered = asked.rendered
                    last = self._track(tracker, asked.index, asked.frame, last)
                    self._tracks.publish(last)
        finally:
            self._tracks.close()

    def _start_tracker(self) -> FaceTracker | None:
        """The face tracker; None with a fixed crop (asked for, or faces cannot be found here)."""
        if self._fixed_crop:
            return None
        try:
            return FaceTracker(config=self.config.tracker)
        except FaceDetectionUnavailable as error:
            self._fixed_crop = True  # before the tracks close, so the motion thread sees it when woken
            self._emit(TrackingUnavailable(error.message))
            return None

    def _track(self, tracker: FaceTracker, index: int, frame: np.ndarray, last: _Track) -> _Track:
        """The tracker's word on one frame; a frame it fails on counts as one without a face."""
        with self._metrics.stage("track"):
            result = self._safely(tracker.track, frame)
        if result is None:
            return _Track(index, frame.shape, last.box if last.shape == frame.shape else None, False)
        return _Track(index, frame.shape, result.box, result.found)

    def _motion_loop(self) -> None:
        try:
            with self._own_stream():
                while (item := self._inbox.get()) is not None and item is not _END:
                    index, frame, _ = item
                    self._asked.update(lambda asked: dataclasses.replace(asked, index=index, frame=frame))
                    coded = self._safely(self._read_motion, *item)
                    if coded is not None and not self._coded.put(coded):
                        return
        finally:
            self._asked.close()
            self._coded.put(_END)

    @contextlib.contextmanager
    def _own_stream(self) -> Iterator[None]:
        """A CUDA stream of the calling thread's own, so its work overlaps the renderer's."""
        device = self.animator.device
        if device.type != "cuda":
            yield
            return
        with torch.cuda.stream(torch.cuda.Stream(device)):
            yield

    def _render_loop(self) -> None:
        try:
            if len(self._avatars) == 0:
                self.add_avatar(*default_avatar())
            self._warm_up()
            while (item := self._coded.get()) is not None and item is not _END:
                self._asked.update(lambda asked: dataclasses.replace(asked, rendered=asked.rendered + 1))
                rendered = self._safely(self._render_frame, item)
                self._report_optimizing()
                if rendered is not None and not self._outbox.put(rendered):
                    return
        finally:
            self._ready.set()
            self._outbox.put(_END)

    def _warm_up(self) -> None:
        """Run the per-frame graphs once before the first real frame: compilation, CUDA-graph
        capture and cuDNN autotuning happen here, not as a stall (and dropped frames) mid-stream."""
        encoded = self._show(self._avatars.current()).encoded
        rest = self._on_device(np.zeros(encoded.alpha.shape[1], dtype=np.float32))
        self._emit(EnginePreparing())
        started = time.monotonic()
        with self._metrics.stage("warm_up"):
            self.animator.motion(encoded.crop)
            self.animator.render(encoded, rest, rest)
        self._emit(Started(self.source.describe(), self.animator.engine.describe(), time.monotonic() - started))
        self._ready.set()

    def _report_optimizing(self) -> None:
        """Say how far the engine's background optimizing is, when that changes (polled per frame: cheap)."""
        event = self._optimizing.update(self.animator.engine.optimizing())
        if event is not None:
            self._emit(event)

    def _safely(self, step: Callable[..., Any], *args: Any) -> Any | None:
        """`step(*args)`, with a failed frame skipped and reported (the first, then every 100th)."""
        try:
            return step(*args)
        except Exception as error:
            self._frame_failures += 1
            if self._frame_failures == 1 or self._frame_failures % 100 == 0:
                log.debug("a frame failed", exc_info=True)
                self._emit(FrameFailed(self._frame_failures, str(error)))
            return None

    def _output_loop(self) -> None:
        sinks: dict[str, Sink] = {}
        shape: tuple[int, ...] | None = None  # of the output frames; known from the first one
        delivered = 0
        try:
            with self._own_stream():
                while (item := self._outbox.get(timeout=0.25)) is not _END and not (item is None and self._outbox.closed):
                    frame = self._safely(self._compose, item) if item is not None else None
                    shape = frame.output.shape if frame is not None else shape
                    if shape is not None:
                        self._apply_requests(sinks, shape)
                    if frame is None:
                        continue
                    self._deliver(dataclasses.replace(frame, stats=self._metrics.snapshot()), sinks)
                    delivered += 1
                    if self.config.max_frames is not None and delivered >= self.config.max_frames:
                        return
        finally:
            self._halt()
            for sink in sinks.values():
                self._close_sink(sink)
            self._emit(Stopped(self._metrics.snapshot()))
            self._finished.set()

    def _deliver(self, frame: LiveFrame, sinks: dict[str, Sink]) -> None:
        """The frame into every output (one that fails is closed and reported), then to the owner."""
        with self._metrics.stage("output"):
            for key in sorted(sinks, key=_SINK_ORDER.index):
                try:
                    sinks[key].write(frame)
                except Exception as error:
                    self._drop_failed_sink(sinks.pop(key), error)
            self._emit(FrameDelivered(frame))
        self._metrics.delivered(frame.captured_at)

    def _apply_requests(self, sinks: dict[str, Sink], shape: tuple[int, ...]) -> None:
        """Open and close outputs as asked (on this thread: sinks are not thread-safe), at the
        source's frame rate."""
        size = (shape[1], shape[0])
        fps = self.source.fps
        while self._requests:
            what, value = self._requests.popleft()
            if what in sinks:
                self._close_sink(sinks.pop(what))
            if not value:
                continue
            try:
                if what == "vcam":
                    sink: Sink = VirtualCameraSink(size, fps, self.config.virtual_camera)
                elif what == "record":
                    sink = RecorderSink(value, fps, size, pace=self.source.live)
                else:
                    sink = MotionRecorder(value, fps)
            except Exception as error:  # an output that cannot start never ends the stream
                log.debug("an output could not start", exc_info=True)
                self._emit(virtual_camera_failed_to_start(error) if what == "vcam"
                           else recording_failed_to_start(value, error))
                continue
            sinks[what] = sink
            self._emit(sink.opened())

    def _close_sink(self, sink: Sink) -> None:
        """Finish an output: its 'closed' event, or its 'failed' one if finishing failed."""
        try:
            sink.close()
        except Exception as error:
            log.debug("closing an output failed", exc_info=True)
            self._emit(sink.failed(error))
        else:
            self._emit(sink.closed())

    def _drop_failed_sink(self, sink: Sink, error: Exception) -> None:
        """Close an output that failed to write (what it had written is kept) and report the error."""
        log.debug("an output failed", exc_info=True)
        try:
            sink.close()
        except Exception:
            log.debug("closing the failed output failed too", exc_info=True)
        self._emit(sink.failed(error))

    def _halt(self) -> None:
        """Make every thread wind down soon: the source ends and the queues close."""
        self.source.close()
        self._inbox.close()
        self._coded.close()
        self._outbox.close()
        self._asked.close()
        self._tracks.close()
        self._ready.set()

    def _emit(self, event: SessionEvent) -> None:
        """Hand `event` to the owner; a failing callback is logged (the first and every 100th), not fatal."""
        try:
            self._on_event(event)
        except Exception:
            self._event_failures += 1
            if self._event_failures == 1 or self._event_failures % 100 == 0:
                log.exception("the event callback failed (%d times so far)", self._event_failures)


def _due(asked: _Asked, last: _Track, rendered: int) -> bool:
    """Whether the tracker is to follow the face on `asked`'s frame: one newer than it last tracked,
    and either the renderer has taken a motion code since it started that track (one track per
    rendered frame, however far the motion thread reads ahead), or it follows no face in frames of
    this shape yet (the motion thread waits for it then)."""
    if asked.frame is None or asked.index <= last.index:
        return False
    return asked.rendered > rendered or last.box is None or asked.frame.shape != last.shape


def _used_on_this_stream(image: torch.Tensor) -> None:
    """Tell the CUDA allocator that `image`, made on the render thread's stream, is read on this
    thread's: its memory is then not reused before this thread's work on it is done."""
    if image.device.type == "cuda":
        image.record_stream(torch.cuda.current_stream(image.device))


def _synchronize(image: torch.Tensor) -> None:
    """Wait for this thread's GPU work (not the motion stream's), so stage times measure the
    work and not its launch."""
    if image.device.type == "cuda":
        torch.cuda.current_stream(image.device).synchronize()
