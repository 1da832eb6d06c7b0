"""`main.py devices`: the cameras this machine has, and whether a virtual camera can start.

The two questions people ask first when "the camera does not show up": which index is my
webcam, and is the virtual-camera driver installed.
"""

from __future__ import annotations

import argparse
import logging
import platform

from liveanim.app.cli.options import positive_int
from liveanim.errors import LiveAnimError
from liveanim.pipeline.sinks import VirtualCameraConfig, probe_virtual_camera
from liveanim.pipeline.sources import probe_cameras

log = logging.getLogger(__name__)


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


def probe_virtual_cameras() -> dict[str, str]:
    """{backend name: the device it opened, or why it cannot start and how to fix that}."""
    import pyvirtualcam

    backends = list(pyvirtualcam.camera.BACKENDS)
    if not backends:
        return {"(none)": f"pyvirtualcam has no backend for {platform.system()}"}
    outcome = {}
    for name in backends:
        try:
            outcome[name] = f"available ({probe_virtual_camera(VirtualCameraConfig(backend=name))})"
        except LiveAnimError as error:
            outcome[name] = f"unavailable. {error}"
    return outcome
