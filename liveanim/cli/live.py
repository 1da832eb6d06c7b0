"""`main.py live`: your face drives a portrait, into a virtual camera, a recording or a preview.

Runs until Ctrl-C, SIGTERM, the end of a video (without --loop) or --max-frames; every
file is finalized on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from liveanim.cli.options import (
    add_edit_options,
    add_engine_options,
    edit_from_args,
    existing_file,
    open_animator,
    positive_int,
)
from liveanim.errors import UsageError
from liveanim.motion.controller import MotionConfig
from liveanim.motion.dials import GROUPS, check_intensity, parse_assignments
from liveanim.motion.limits import LIMITS
from liveanim.pipeline.avatars import AvatarConfig
from liveanim.pipeline.live import LiveConfig, LiveFrame, LiveSession
from liveanim.pipeline.sinks import VirtualCameraConfig
from liveanim.pipeline.sources import CameraConfig, CameraSource, FrameSource, ImageFolderSource, VideoFileSource
from liveanim.pipeline.video import read_image

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
    group.add_argument("--fps", type=float, default=LiveConfig.fps,
                       help=f"camera frame rate, and the rate the outputs announce (default {LiveConfig.fps:g})")
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
    group.add_argument("--record", type=Path, metavar="MP4", help="record the output")
    group.add_argument("--record-motion", type=Path, metavar="NPZ",
                       help="save the motion (codes and dials of every frame) for replay onto any avatar")
    group.add_argument("--output-size", type=_size, default=None, metavar="WxH",
                       help="size of the output (default: the first avatar's picture)")
    group.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="stop after N frames")
    group.add_argument("--stats-json", type=Path, metavar="PATH", help="write the final statistics as JSON")


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
    avatars = [(read_image(path), path.name) for path in args.avatar]
    preview = _Preview() if args.preview else None
    with open_animator(args, live=True) as animator:
        session = LiveSession(config, animator, _source(args), on_frame=preview.show if preview else None)
        for image, name in avatars:
            session.add_avatar(image, name)
        session.set_edit(edit)
        for group, value in intensity.items():
            session.set_intensity(group, value)
        started = time.monotonic()
        try:
            with _stop_requested_on_signals() as stop_requested:
                session.start()
                if preview is not None:
                    preview.run(session, stop_requested)
                while not session.wait(0.2) and not stop_requested.is_set():
                    pass
        finally:
            session.stop()
        if args.stats_json:
            _write_stats(args.stats_json, session, time.monotonic() - started, config)
    if session.error is not None:
        raise session.error
    return 0


def live_config(args: argparse.Namespace) -> LiveConfig:
    """The session configuration the options describe."""
    try:
        smoothing = LIMITS.smoothing.check(args.smoothing, "--smoothing")
    except ValueError as error:
        raise UsageError(str(error)) from None
    return LiveConfig(
        fps=args.fps,
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


@contextlib.contextmanager
def _stop_requested_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while inside, so the loop ends cleanly (files finalized).

    Python runs signal handlers on the main thread only; elsewhere the event is never set.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handle(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        requested.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_stats(path: Path, session: LiveSession, elapsed_s: float, config: LiveConfig) -> None:
    """The final figures, for benchmarks and bug reports."""
    stats = session.stats
    device = session.animator.device
    report = {
        "engine": session.animator.engine.describe(),
        "source": session.source.describe(),
        "face_tracking": config.track,
        "fps": stats.fps,
        "frames": stats.frames,
        "dropped": stats.dropped,
        "latency_ms_p50": stats.latency_ms_p50,
        "latency_ms_p95": stats.latency_ms_p95,
        "stage_ms": stats.stage_ms,
        "elapsed_s": elapsed_s,
        # tensors at their peak, and what PyTorch's caching allocator held from the GPU at its peak
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "peak_gpu_memory_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9 if device.type == "cuda" else None,
    }
    path.write_text(json.dumps(report, indent=2))
    log.info("statistics written to %s", path)


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

    def run(self, session: LiveSession, stop_requested: threading.Event) -> None:
        """Show frames until the window is closed, the session ends or a stop is requested."""
        from PyQt6.QtCore import QTimer
        from PyQt6.QtWidgets import QApplication

        from ui.frame_view import FrameView

        app = QApplication.instance() or QApplication([])
        view = FrameView("Waiting for the first frame...")
        view.setWindowTitle("LiveAnim preview")
        view.show()

        def tick() -> None:
            if stop_requested.is_set() or session.wait(0):
                app.quit()
            elif self._latest is not None:
                frame, self._latest = self._latest, None
                view.set_frame(frame.output)

        timer = QTimer()
        timer.timeout.connect(tick)
        timer.start(15)
        app.exec()
        stop_requested.set()
