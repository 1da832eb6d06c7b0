"""`main.py devices`: the cameras this machine has, and whether a virtual camera can start.

The two questions people ask first when "the camera does not show up": which index is my
webcam, and is the virtual-camera driver installed.
"""

from __future__ import annotations

import argparse
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import cv2

from liveanim.cli.options import positive_int
from liveanim.errors import LiveAnimError
from liveanim.pipeline.sinks import VirtualCameraConfig, VirtualCameraSink
from liveanim.pipeline.sources import camera_api

log = logging.getLogger(__name__)

PROBE_SIZE = (640, 480)  # a size every virtual camera backend accepts


@dataclass(frozen=True)
class CameraInfo:
    """A camera that opened: its index, size, rate and (on Linux) its driver name."""

    index: int
    width: int
    height: int
    fps: float
    name: str


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("devices", help="list cameras and virtual-camera backends",
                                   description="Probe camera indices and try each virtual-camera backend.")
    parser.add_argument("--max-index", type=positive_int, default=10, metavar="N",
                        help="probe camera indices 0..N-1 (default 10)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cameras = probe_cameras(range(args.max_index))
    if not cameras:
        log.info("no camera found at indices 0..%d", args.max_index - 1)
    for camera in cameras:
        log.info("camera %d: %dx%d at %.0f fps%s", camera.index, camera.width, camera.height, camera.fps,
                 f" ({camera.name})" if camera.name else "")
    for backend, outcome in probe_virtual_cameras().items():
        log.info("virtual camera backend %s: %s", backend, outcome)
    return 0


def probe_cameras(indices: range) -> list[CameraInfo]:
    """The indices that open and deliver a frame, with the capture backend `live` uses."""
    found = []
    previous_level = cv2.utils.logging.getLogLevel()  # the contrib build has it here only
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # missing indices are expected
    try:
        for index in indices:
            capture = cv2.VideoCapture(index, camera_api())
            try:
                if capture.isOpened() and capture.read()[0]:
                    found.append(CameraInfo(index, int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                                            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                                            capture.get(cv2.CAP_PROP_FPS), _linux_name(index)))
            finally:
                capture.release()
    finally:
        cv2.utils.logging.setLogLevel(previous_level)
    return found


def probe_virtual_cameras() -> dict[str, str]:
    """{backend name: the device it opened, or why it cannot start and how to fix that}."""
    import pyvirtualcam

    backends = list(pyvirtualcam.camera.BACKENDS)
    if not backends:
        return {"(none)": f"pyvirtualcam has no backend for {platform.system()}"}
    outcome = {}
    for name in backends:
        try:
            sink = VirtualCameraSink(PROBE_SIZE, 30.0, VirtualCameraConfig(backend=name))
        except LiveAnimError as error:
            outcome[name] = f"unavailable. {error}"
            continue
        outcome[name] = f"available ({sink.device})"
        sink.close()
    return outcome


def _linux_name(index: int) -> str:
    """The driver's name of /dev/video<index> (e.g. 'LiveAnim' for a v4l2loopback device)."""
    path = Path(f"/sys/class/video4linux/video{index}/name")
    return path.read_text().strip() if path.is_file() else ""
