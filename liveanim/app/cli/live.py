"""`main.py live`: your face drives a portrait, into a virtual camera, a recording or a preview.

Runs until Ctrl-C, SIGTERM, the end of a video (without --loop), --max-frames or --duration.
The input is opened and the outputs are checked before the model loads. Every file is
finalized on the way out, also when Ctrl-C is pressed again meanwhile. An output that fails
(a full disk, a virtual camera that goes away) is reported at once; the stream goes on while
another output asked for still works, and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from liveanim.app.cli.options import (
    add_edit_options,
    add_engine_options,
    edit_from_args,
    existing_file,
    open_animator,
    positive_int,
)
from liveanim.app.cli.stop_signals import StopSignals
from liveanim.errors import LiveAnimError, UsageError
from liveanim.files import write_atomically
from liveanim.motion.controller import Dials, MotionConfig
from liveanim.motion.dials import GROUPS, check_intensity, parse_assignments
from liveanim.motion.limits import LIMITS
from liveanim.pipeline.avatars import AvatarConfig
from liveanim.pipeline.events import (FrameDelivered, RecordingFailed, SessionEvent, SessionFailed,
                                      VirtualCameraFailed, log_event)
from liveanim.pipeline.live import LiveConfig, LiveFrame, LiveSession
from liveanim.pipeline.metrics import sample_process
from liveanim.pipeline.sinks import VirtualCameraConfig, probe_virtual_camera
from liveanim.pipeline.sources import CameraConfig, CameraSource, FrameSource, ImageFolderSource, VideoFileSource
from liveanim.pipeline.video import check_output, read_image

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "live", help="animate a portrait live from a webcam, into a virtual camera",
        description="Drive a portrait with your face in real time. The output goes to a virtual camera "
                    "(--vcam) that Zoom, Meet and OBS list as a webcam, and/or to a recording.",
    )
    _add_input_options(parser)
    _add_output_options(parser)
    _add_avatar_options(parser)
    add_edit_options(parser)
    add_engine_options(parser)
    parser.set_defaults(run=run)


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input (default: camera 0)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--camera", default="0", metavar="INDEX|PATH",
                        help="camera index (0 = first) or device path such as /dev/video2")
    source.add_argument("--video", type=existing_file, metavar="PATH", help="a driving video instead of a camera")
    source.add_argument("--images", type=Path, metavar="DIR", help="a folder of driving frames, in name order")
    group.add_argument("--loop", action="store_true", help="replay the video or folder endlessly")
    pace = group.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="play the video at its own rate, dropping frames the loop cannot keep up with (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="process every frame of the video, as fast as possible")
    group.add_argument("--fps", type=_positive_float, default=CameraConfig.fps,
                       help=f"camera frame rate to ask for, and the rate of --images (default {CameraConfig.fps:g}); "
                            f"outputs run at the source's rate")
    group.add_argument("--size", type=_size, default=(CameraConfig.width, CameraConfig.height), metavar="WxH",
                       help=f"camera resolution to ask for (default {CameraConfig.width}x{CameraConfig.height})")
    group.add_argument("--no-track", dest="track", action="store_false",
                       help="no face tracking (no mediapipe): crop the centre square of every frame")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--vcam", action="store_true", help="send the output to a virtual camera")
    group.add_argument("--vcam-backend", default=None, metavar="NAME",
                       help="pyvirtualcam backend: v4l2loopback (Linux), obs, unitycapture (Windows)")
    group.add_argument("--vcam-device", default=None, metavar="DEV", help="e.g. /dev/video10 or 'OBS Virtual Camera'")
    group.add_argument("--preview", action="store_true", help="show the output in a window (needs a desktop)")
    group.add_argument("--record", type=Path, metavar="MP4",
                       help="record the output (fragmented mp4: a crash keeps all but about the last second)")
    group.add_argument("--record-motion", type=Path, metavar="PATH",
                       help="write the motion (codes and dials of every frame) as it comes, for replay onto any avatar")
    group.add_argument("--output-size", type=_size, default=None, metavar="WxH",
                       help="size of the output (default: the first avatar's picture)")
    group.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="stop after N frames")
    group.add_argument("--duration", type=_positive_float, default=None, metavar="SECONDS",
                       help="stop after this many seconds of streaming")
    group.add_argument("--stats-json", type=Path, metavar="PATH",
                       help="write the statistics as JSON when the stream ends (also after an error or Ctrl-C)")
    group.add_argument("--stats-every", type=_positive_float, default=None, metavar="SECONDS",
                       help="with --stats-json: also add a sample (fps, latency, memory, GPU memory, threads) "
                            "this often and rewrite the file, for long runs")


def _add_avatar_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("avatar and motion")
    group.add_argument("--avatar", type=existing_file, action="append", default=[], metavar="PATH",
                       help="portrait to animate; repeat to preload several (default: the astronaut photo)")
    group.add_argument("--no-crop", dest="auto_crop", action="store_false",
                       help="the portraits are already face crops: use their centre square as they are")
    group.add_argument("--crop-only", action="store_true", help="output the animated crop, not the whole picture")
    group.add_argument("--intensity", action="append", default=[], metavar="GROUP=VALUE",
                       help=f"scale the motion of a group ({', '.join(GROUPS)}); 0 freezes it (default 1)")
    group.add_argument("--smoothing", type=float, default=MotionConfig.smoothing, metavar="0..1",
                       help=f"0 = raw motion, 1 = heavy smoothing (default {MotionConfig.smoothing})")


def run(args: argparse.Namespace) -> int:
    config = live_config(args)
    intensity = _intensity(args.intensity)
    edit = edit_from_args(args)
    if args.stats_every is not None and args.stats_json is None:
        raise UsageError("--stats-every needs --stats-json PATH to write the samples to")
    avatars = [(read_image(path), path.name) for path in args.avatar]
    source = _source(args)  # a missing camera or video fails here, before any model work
    _check_outputs(args, config)
    preview = _Preview() if args.preview else None
    with StopSignals() as stop:  # from arm() on, signals only ask to stop, until every file is closed
        outcome = _Outcome(_asked_outputs(config, preview is not None), stop.requested)
        with open_animator(args, live=True) as animator:
            session = LiveSession(config, animator, source, on_event=_observer(outcome, preview))
            stop.arm()
            report = _Report(args.stats_json, args.stats_every, session) if args.stats_json else None
            watch = _Watch(session, stop.requested, args.duration, report)
            try:
                for image, name in avatars:
                    session.add_avatar(image, name)
                session.set_dials(Dials(edit=edit, intensity=intensity, smoothing=config.motion.smoothing))
                session.start()
                if preview is not None:
                    preview.run(watch.keep_going, stop.requested)
                while watch.keep_going():
                    session.wait(0.2)
            except LiveAnimError as error:  # e.g. no face in an avatar: reported by main, kept in the report
                outcome.error = error
                raise
            finally:
                session.stop()
                if report is not None:
                    report.write(outcome)
    return outcome.exit_code()


def _observer(outcome: _Outcome, preview: _Preview | None) -> Callable[[SessionEvent], None]:
    """The session's event callback: frames to the preview, everything else to the outcome."""
    def on_event(event: SessionEvent) -> None:
        if isinstance(event, FrameDelivered):
            if preview is not None:
                preview.show(event.frame)
        else:
            outcome.handle(event)

    return on_event


def live_config(args: argparse.Namespace) -> LiveConfig:
    """The session configuration the options describe."""
    try:
        smoothing = LIMITS.smoothing.check(args.smoothing, "--smoothing")
    except ValueError as error:
        raise UsageError(str(error)) from None
    return LiveConfig(
        track=args.track,
        motion=MotionConfig(smoothing=smoothing),
        avatars=AvatarConfig(auto_crop=args.auto_crop, crop_only=args.crop_only, output_size=args.output_size),
        vcam=args.vcam,
        virtual_camera=VirtualCameraConfig(backend=args.vcam_backend, device=args.vcam_device),
        record=args.record,
        record_motion=args.record_motion,
        max_frames=args.max_frames,
    )


def _source(args: argparse.Namespace) -> FrameSource:
    if args.video is not None:
        return VideoFileSource(args.video, loop=args.loop, realtime=args.realtime)
    if args.images is not None:
        return ImageFolderSource(args.images, fps=args.fps, loop=args.loop, realtime=args.realtime)
    device = int(args.camera) if args.camera.isdigit() else args.camera
    width, height = args.size
    return CameraSource(CameraConfig(device=device, width=width, height=height, fps=args.fps))


def _check_outputs(args: argparse.Namespace, config: LiveConfig) -> None:
    """Refuse outputs that cannot work before the model loads: recording folders are made or
    refused, the virtual camera is started and stopped once."""
    for path in (args.record, args.record_motion):
        if path is not None:
            check_output(path)
    if config.vcam:
        device = probe_virtual_camera(config.virtual_camera)
        log.info("virtual camera %s is available", device)


def _asked_outputs(config: LiveConfig, preview: bool) -> set[str]:
    """The outputs the person asked for, by the names `_Outcome` tracks them under."""
    asked = {str(path) for path in (config.record, config.record_motion) if path is not None}
    return asked | ({"vcam"} if config.vcam else set()) | ({"preview"} if preview else set())


class _Outcome:
    """Turns the session's events into log lines and the exit code, and asks to stop once every
    output the person asked for has failed (a stream nobody receives is of no use)."""

    def __init__(self, outputs: set[str], stop: threading.Event) -> None:
        self._working = set(outputs)
        self._stop = stop
        self.failed: list[str] = []  # what failed, named for a person
        self.error: LiveAnimError | None = None

    def handle(self, event: SessionEvent) -> None:
        log_event(log, event)
        if isinstance(event, RecordingFailed):
            self._output_failed(str(event.path), f"the recording {event.path}")
        elif isinstance(event, VirtualCameraFailed):
            self._output_failed("vcam", f"the virtual camera{f' {event.device}' if event.device else ''}")
        elif isinstance(event, SessionFailed):
            self.error = event.error

    def exit_code(self) -> int:
        """0 for a clean end; 2 when the session or an output failed (each was logged when it did)."""
        if self.failed:
            log.error("live ended with a failed output: %s (see above)", ", ".join(self.failed))
        return 2 if self.failed or self.error is not None else 0

    def _output_failed(self, key: str, name: str) -> None:
        self.failed.append(name)
        self._working.discard(key)
        if not self._working and not self._stop.is_set():
            log.error("no output asked for is working any more: stopping")
            self._stop.set()


class _Watch:
    """Decides, a few times a second on the main thread, whether the stream goes on; takes the
    periodic samples meanwhile."""

    def __init__(self, session: LiveSession, stop: threading.Event, duration_s: float | None,
                 report: _Report | None) -> None:
        self._session = session
        self._stop = stop
        self._deadline = time.monotonic() + duration_s if duration_s is not None else None
        self._report = report

    def keep_going(self) -> bool:
        if self._report is not None:
            self._report.sample_if_due()
        if self._deadline is not None and time.monotonic() >= self._deadline and not self._stop.is_set():
            log.info("--duration reached: stopping")
            self._stop.set()
        return not (self._stop.is_set() or self._session.wait(0))


class _Report:
    """The --stats-json file: the final figures, and with --stats-every a sample every so often
    (rewritten each time, so a run that is killed still leaves its samples)."""

    def __init__(self, path: Path, every_s: float | None, session: LiveSession) -> None:
        self.path = path
        self._every_s = every_s
        self._session = session
        self._started = time.monotonic()
        self._next = self._started + every_s if every_s is not None else None
        self._samples: list[dict] = []

    def sample_if_due(self) -> None:
        if self._next is None or time.monotonic() < self._next:
            return
        self._next += self._every_s
        stats = self._session.stats
        self._samples.append({"t_s": round(time.monotonic() - self._started, 1), "frames": stats.frames,
                              "fps": stats.fps, "latency_ms_p50": stats.latency_ms_p50,
                              "latency_ms_p95": stats.latency_ms_p95, "dropped": stats.dropped,
                              **asdict(sample_process(self._session.animator.device))})
        self.write(None)

    def write(self, outcome: _Outcome | None) -> None:
        """The figures so far (with `outcome`: the final ones), replacing the file in one step."""
        session = self._session
        stats = session.stats
        device = session.animator.device
        report = {
            "engine": session.animator.engine.describe(),
            "source": session.source.describe(),
            "face_tracking": session.config.track,
            "fps": stats.fps,
            "frames": stats.frames,
            "dropped": stats.dropped,
            "latency_ms_p50": stats.latency_ms_p50,
            "latency_ms_p95": stats.latency_ms_p95,
            "stage_ms": stats.stage_ms,
            "elapsed_s": time.monotonic() - self._started,
            # tensors at their peak, and what PyTorch's caching allocator held from the GPU at its peak
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
            "peak_gpu_memory_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9 if device.type == "cuda" else None,
            "finished": outcome is not None,
            "error": str(outcome.error) if outcome is not None and outcome.error is not None else None,
            "failed_outputs": outcome.failed if outcome is not None else [],
            "samples": self._samples,
        }
        try:
            write_atomically(self.path, json.dumps(report, indent=2))
        except OSError as error:
            log.error("could not write the statistics to %s: %s", self.path, error.strerror or error)
            return
        if outcome is not None:
            log.info("statistics written to %s", self.path)


def _positive_float(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def _intensity(items: list[str]) -> dict[str, float]:
    try:
        return check_intensity(parse_assignments(items))
    except ValueError as error:
        raise UsageError(f"--intensity: {error}") from None


def _size(value: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); even sides, as H.264 needs."""
    width, sep, height = value.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()) or int(width) < 2 or int(height) < 2:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x720, got {value!r}")
    if int(width) % 2 or int(height) % 2:
        raise argparse.ArgumentTypeError(f"both sides must be even (H.264), got {value!r}")
    return int(width), int(height)


class _Preview:
    """A window showing the output (the desktop app's frame view); closing it stops the session.

    Frames arrive on the output thread; the window shows the newest one on a timer, which
    also lets Python's signal handlers run while Qt's event loop holds the main thread.
    """

    def __init__(self) -> None:
        if platform.system() == "Linux" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                 or os.environ.get("QT_QPA_PLATFORM")):
            raise UsageError("--preview needs a desktop session (no DISPLAY); record with --record instead")
        self._latest: LiveFrame | None = None

    def show(self, frame: LiveFrame) -> None:
        self._latest = frame

    def run(self, keep_going: Callable[[], bool], stop_requested: threading.Event) -> None:
        """Show frames while `keep_going()`; closing the window asks to stop."""
        from PyQt6.QtCore import QTimer
        from PyQt6.QtWidgets import QApplication

        from liveanim.app.ui.frame_view import FrameView

        app = QApplication.instance() or QApplication([])
        view = FrameView("Waiting for the first frame...")
        view.setWindowTitle("LiveAnim preview")
        view.show()

        def tick() -> None:
            if not keep_going():
                app.quit()
            elif self._latest is not None:
                frame, self._latest = self._latest, None
                view.set_frame(frame.output)

        timer = QTimer()
        timer.timeout.connect(tick)
        timer.start(15)
        app.exec()
        stop_requested.set()
