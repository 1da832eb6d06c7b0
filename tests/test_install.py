"""What one `pip install -e .` gives: a single OpenCV that the project's calls work with."""

from __future__ import annotations

import importlib.metadata
import logging

from liveanim.app.cli import main


def test_exactly_one_opencv_is_installed() -> None:
    """Two OpenCV wheels share the cv2 folder, and the one installed last silently wins."""
    names = {dist.metadata["Name"].lower() for dist in importlib.metadata.distributions()}
    assert sorted(name for name in names if name.startswith("opencv")) == ["opencv-contrib-python"]


def test_devices_command_lists_what_it_finds(caplog) -> None:
    """`main.py devices` probes cameras through OpenCV (the contrib build keeps its log level in cv2.utils)."""
    with caplog.at_level(logging.INFO):
        assert main(["devices"]) == 0
    assert "virtual camera backend" in caplog.text
