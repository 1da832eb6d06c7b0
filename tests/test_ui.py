"""The desktop app, offscreen, over a small seeded model on the CPU.

The stream tests share one window that plays a short video file (TestStreaming). Set
LIVEANIM_SCREENSHOT=1 to rewrite docs/screenshot.png.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import dataclasses  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import cv2  # noqa: E402
import huggingface_hub  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import pyvirtualcam  # noqa: E402
import torch  # noqa: E402
from PyQt6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PyQt6.QtGui import QDropEvent, QImage, QPixmap  # noqa: E402
from PyQt6.QtWidgets import QApplication, QMessageBox  # noqa: E402
from skimage import data  # noqa: E402

from liveanim.app.ui import main_window  # noqa: E402
from liveanim.app.ui.avatar_library import DEFAULT_AVATAR  # noqa: E402
from liveanim.app.ui.avatar_gallery import AvatarThumbnails  # noqa: E402
from liveanim.app.ui.frame_view import LOST_COLOUR, InputView  # noqa: E402
from liveanim.app.ui.main_window import MainWindow, WindowDeps  # noqa: E402
from liveanim.app.ui.model_source import ModelSource  # noqa: E402
from liveanim.app.ui.session_controller import EngineInfo  # noqa: E402
from liveanim.app.ui.presets import PresetStore  # noqa: E402
from liveanim.app.ui.settings import AppSettings  # noqa: E402
from liveanim.app.ui.source_picker import SourceSpec  # noqa: E402
from liveanim.engines import EngineConfig, create_engine  # noqa: E402
from liveanim.errors import LiveAnimError  # noqa: E402
from liveanim.face import CropBox  # noqa: E402
from liveanim.motion.dials import DIALS_BY_NAME, MOTION_DIM  # noqa: E402
from liveanim.pipeline.animator import Animator  # noqa: E402
from liveanim.pipeline.events import Optimized, Optimizing  # noqa: E402
from liveanim.pipeline.live import LiveConfig, LiveFrame, LiveSession  # noqa: E402
from liveanim.pipeline.video import VideoReader, VideoWriter, read_image, write_image  # noqa: E402
from tests.test_face import without_egl  # noqa: E402
from tests.test_live import ScriptedSource  # noqa: E402
from tests.test_prefill import use_caches  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDED = ModelSource(seeded_width=0.125)
STREAM_TIMEOUT_S = 90.0
STREAM_TIMEOUT_MS = int(STREAM_TIMEOUT_S * 1000)


def wait_until(predicate: Callable[[], bool], timeout_s: float = STREAM_TIMEOUT_S) -> None:
    """Run the Qt event loop until `predicate()` holds (for fixtures, which have no qtbot)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the app"
        QApplication.processEvents()
        time.sleep(0.02)


def pixels(pixmap: QPixmap) -> np.ndarray:
    """A pixmap as uint8 RGB (H, W, 3)."""
    image = pixmap.toImage().convertToFormat(QImage.Format.Format_RGB888)
    row = image.bytesPerLine()
    flat = np.frombuffer(image.constBits().asstring(row * image.height()), dtype=np.uint8)
    return flat.reshape(image.height(), row)[:, : image.width() * 3].reshape(image.height(), image.width(), 3)


def make_deps(folder: Path, model: ModelSource = SEEDED) -> WindowDeps:
    return WindowDeps(model=model, settings=AppSettings.at(folder / "settings.ini"),
                      presets=PresetStore(folder / "presets"), list_cameras=lambda: [])


def driving_video(path: Path, frames: int = 8) -> Path:
    """A short clip of the astronaut moving a little, as a driving video."""
    picture = cv2.resize(data.astronaut(), (288, 288), interpolation=cv2.INTER_AREA)
    with VideoWriter(path, 12, (256, 256)) as writer:
        for shift in (0, 4, 8, 12, 16, 12, 8, 4)[:frames]:
            writer.write(np.ascontiguousarray(picture[shift: shift + 256, 16: 272]))
    return path


def open_window(deps: WindowDeps) -> MainWindow:
    window = MainWindow(deps)
    window.show()
    window.start_up()
    return window


class FrameLog:
    """The frames the window received, newest last."""

    def __init__(self, window: MainWindow) -> None:
        self.frames: list[LiveFrame] = []
        window.controller.frame_ready.connect(self.frames.append)

    def after(self, count: int) -> list[LiveFrame]:
        return self.frames[count:]


@pytest.fixture(scope="class")
def streaming(qapp, tmp_path_factory) -> Iterator[tuple[MainWindow, FrameLog]]:
    """A window streaming a looping video file into the output, with the default avatar;
    shared by the tests of one class (a start costs seconds on the CPU)."""
    folder = tmp_path_factory.mktemp("streaming")
    window = open_window(make_deps(folder))
    log = FrameLog(window)
    window.sources.select(SourceSpec.file(driving_video(folder / "driving.mp4")))
    wait_until(lambda: window.controller.has_engine and window.gallery.count() == 1)
    window.start_action.trigger()
    wait_until(lambda: len(log.frames) >= 1 and window.output_view.pixmap() is not None)
    yield window, log
    window.close()
    assert window.controller.session is None


class TestStreaming:
    """While one window streams."""

    def test_video_file_plays_into_the_output_preview(self, streaming, qtbot):
        window, log = streaming
        qtbot.waitUntil(lambda: len(log.frames) >= 2, timeout=STREAM_TIMEOUT_MS)
        shown = pixels(window.output_view.pixmap())
        assert shown.shape == log.frames[-1].output.shape
        assert shown.std() > 20, "the output preview is blank"
        assert window.input_view.pixmap() is not None and window.input_view.face_found
        assert window.start_action.text() == "Stop"
        assert "fps" in window.status.fps.text() and "seeded" in window.status.engine.text()

    def test_sliders_change_the_edit_vector_that_reaches_the_pipeline(self, streaming, qtbot, monkeypatch):
        window, log = streaming
        session = window.controller.session
        sent: list[np.ndarray] = []
        monkeypatch.setattr(session, "set_edit", lambda edit, real=session.set_edit: (sent.append(edit), real(edit)))
        yaw = DIALS_BY_NAME["yaw1"].index
        pout = DIALS_BY_NAME["pout"].index
        window.dials.dial_rows[yaw].slider.setValue(200)  # slider steps of 0.001
        window.dials.dial_rows[pout].spin.setValue(-0.1)
        assert sent[-1][yaw] == pytest.approx(0.2) and sent[-1][pout] == pytest.approx(-0.1)
        assert window.dials.raw_rows[yaw].value() == pytest.approx(0.2), "the advanced twin follows"
        seen = len(log.frames)
        qtbot.waitUntil(lambda: any(f.edit[yaw] == pytest.approx(0.2) for f in log.after(seen)),
                        timeout=STREAM_TIMEOUT_MS)
        window.dials.dial_rows[yaw].slider.reset_requested.emit()  # what a double-click does
        window.dials.intensity_rows["mouth"].slider.setValue(50)
        assert sent[-1][yaw] == 0.0
        assert window.controller.session is session

    def test_avatar_switches_during_the_stream(self, streaming, qtbot, tmp_path):
        window, log = streaming
        first = log.frames[-1].output

        def shows(picture: np.ndarray, other: np.ndarray, since: int) -> Callable[[], bool]:
            """Whether a frame delivered after `since` looks more like `picture` than `other` (the
            paste-back keeps each avatar's picture around the rendered face)."""
            def distance(a: np.ndarray, b: np.ndarray) -> float:
                return float(np.abs(a.astype(np.int16) - b).mean())

            return lambda: any(distance(f.output, picture) < distance(f.output, other) for f in log.after(since))

        flipped = np.ascontiguousarray(data.astronaut()[:, ::-1])
        write_image(tmp_path / "flipped.png", flipped)
        window.gallery.add_requested.emit([tmp_path / "flipped.png"])
        qtbot.waitUntil(lambda: window.gallery.count() == 2, timeout=STREAM_TIMEOUT_MS)
        assert window.controller.session.avatars.selected == 1, "a new avatar is shown at once"
        qtbot.waitUntil(shows(flipped, first, len(log.frames)), timeout=STREAM_TIMEOUT_MS)
        window.previous_action.trigger()  # the Left shortcut
        assert window.controller.session.avatars.selected == 0 and window.gallery.current() == 0
        qtbot.waitUntil(shows(first, flipped, len(log.frames)), timeout=STREAM_TIMEOUT_MS)

    def test_calibration_counts_down_then_calibrates(self, streaming, qtbot, monkeypatch):
        window, _ = streaming
        session = window.controller.session
        calls: list[bool] = []
        monkeypatch.setattr(session, "calibrate", lambda: calls.append(True))
        window.countdown._timer.setInterval(100)
        ticks: list[int] = []
        window.countdown.tick.connect(ticks.append)
        window.calibrate_action.trigger()
        assert window.output_view.caption == "3" and not calls
        with qtbot.waitSignal(window.countdown.finished, timeout=5000):
            pass
        assert ticks == [3, 2, 1, 0] and calls == [True] and window.output_view.caption == ""

    def test_virtual_camera_without_a_driver_explains_the_setup(self, streaming, qtbot, monkeypatch):
        def no_driver(*args: object, **kwargs: object) -> None:
            raise RuntimeError("'v4l2loopback' backend: no loopback device found")

        monkeypatch.setattr(pyvirtualcam, "Camera", no_driver)
        window, _ = streaming
        window.vcam_action.trigger()
        qtbot.waitUntil(lambda: not window.vcam_action.isChecked(), timeout=STREAM_TIMEOUT_MS)
        boxes = [b for b in window.findChildren(QMessageBox) if b.windowTitle() == "Virtual camera unavailable"]
        assert boxes and "virtual camera" in boxes[-1].text().lower()
        assert ("modprobe v4l2loopback" in boxes[-1].text()) or ("OBS" in boxes[-1].text())
        boxes[-1].close()

    def test_record_toggle_writes_a_video(self, streaming, qtbot, monkeypatch, tmp_path):
        window, log = streaming
        out = tmp_path / "recording.mp4"
        monkeypatch.setattr(main_window, "recording_path", lambda: out)
        window.record_action.trigger()
        assert window.record_action.isChecked()
        qtbot.waitUntil(out.exists, timeout=STREAM_TIMEOUT_MS)
        seen = len(log.frames)
        qtbot.waitUntil(lambda: len(log.after(seen)) >= 2, timeout=STREAM_TIMEOUT_MS)
        assert "Recording" in window.status.recording.text()
        messages: list[str] = []
        window.status.messageChanged.connect(messages.append)
        window.record_action.trigger()
        qtbot.waitUntil(lambda: any(m.startswith(f"Recording saved to {out}") for m in messages),
                        timeout=STREAM_TIMEOUT_MS)
        assert not window.record_action.isChecked() and window.status.recording.text() == ""
        with VideoReader(out) as reader:
            assert sum(1 for _ in reader) >= 1, "the recording was finalized and plays"

    def test_a_recording_on_a_full_disk_unchecks_record_and_says_it_failed(self, streaming, qtbot, monkeypatch):
        window, log = streaming
        monkeypatch.setattr(main_window, "recording_path", lambda: Path("/dev/full"))  # every write: ENOSPC
        messages: list[str] = []
        window.status.messageChanged.connect(messages.append)
        window.record_action.trigger()
        qtbot.waitUntil(lambda: not window.record_action.isChecked(), timeout=STREAM_TIMEOUT_MS)
        boxes = [b for b in window.findChildren(QMessageBox) if b.windowTitle() == "Recording failed"]
        assert boxes and "The disk is full" in boxes[-1].text() and "/dev/full" in boxes[-1].text()
        assert "Recording failed: /dev/full" in messages and not any("saved" in m for m in messages)
        assert window.status.recording.text() == ""
        boxes[-1].close()
        seen = len(log.frames)
        qtbot.waitUntil(lambda: len(log.after(seen)) >= 1, timeout=STREAM_TIMEOUT_MS)  # the stream goes on

    def test_a_new_input_starts_with_the_dials_and_avatars_already_made(self, streaming, qtbot, tmp_path,
                                                                       monkeypatch):
        """The window keeps one Dials value and hands it whole to each session it opens; with the
        same engine the new session shows the avatars already encoded: no face is looked for and
        no portrait encoded again."""
        import liveanim.pipeline.avatars as avatars
        from liveanim.pipeline.animator import Animator

        detections: list[str] = []
        monkeypatch.setattr(avatars, "crop_portrait",
                            lambda *args, real=avatars.crop_portrait, **kwargs: (detections.append("x"),
                                                                                 real(*args, **kwargs))[1])
        monkeypatch.setattr(Animator, "encode_avatar",
                            lambda self, crop, real=Animator.encode_avatar: (detections.append("encode"),
                                                                             real(self, crop))[1])
        window, log = streaming
        smirk = DIALS_BY_NAME["smirk"].index
        window.dials.dial_rows[smirk].spin.setValue(0.25)
        window.dials.intensity_rows["eyes"].spin.setValue(0.5)
        window.dials.smoothing_row.spin.setValue(0.8)
        first = window.controller.session
        window.sources.select(SourceSpec.file(driving_video(tmp_path / "other.mp4", frames=6)))
        qtbot.waitUntil(lambda: window.controller.session not in (None, first), timeout=STREAM_TIMEOUT_MS)
        dials = window.controller.session.dials
        assert dials.edit[smirk] == pytest.approx(0.25) and dials.intensity["eyes"] == pytest.approx(0.5)
        assert dials.smoothing == pytest.approx(0.8)
        seen = len(log.frames)
        qtbot.waitUntil(lambda: any(f.edit[smirk] == pytest.approx(0.25) for f in log.after(seen)),
                        timeout=STREAM_TIMEOUT_MS)
        assert detections == []

    def test_other_weights_and_back_encode_no_avatar_again(self, streaming, qtbot, monkeypatch):
        """A switch of engine (here to other weights) moves the stream over and encodes every avatar
        for the new engine; switching back encodes none again: the window's avatar list keeps the
        encodings of the engine before."""
        encoded: list[int] = []  # the seed of the engine each avatar was encoded by
        monkeypatch.setattr(Animator, "encode_avatar",
                            lambda self, crop, real=Animator.encode_avatar: (encoded.append(self.engine.config.seed),
                                                                             real(self, crop))[1])
        window, log = streaming
        config = window.deps.model.engine_config(*window.engine_selector.choice(), window.settings.weights)
        for seed in (1, 0):  # other weights, then the ones before
            with qtbot.waitSignal(window.controller.engine_changed, timeout=STREAM_TIMEOUT_MS):
                window.controller.build_engine(dataclasses.replace(config, seed=seed))
            seen = len(log.frames)
            qtbot.waitUntil(lambda: len(log.after(seen)) >= 1, timeout=STREAM_TIMEOUT_MS)
        assert encoded == [1] * window.gallery.count()

    @pytest.mark.skipif(os.environ.get("LIVEANIM_SCREENSHOT") != "1", reason="set LIVEANIM_SCREENSHOT=1 to rewrite it")
    def test_save_screenshot(self, streaming, qtbot):
        window, log = streaming
        window.resize(1440, 900)
        window.dials.reset_all()
        window.dials.dial_rows[DIALS_BY_NAME["mouth"].index].slider.setValue(150)
        before = len(log.frames)
        qtbot.waitUntil(lambda: len(log.after(before)) >= 1, timeout=STREAM_TIMEOUT_MS)
        window.status.clearMessage()  # no temporary test paths in the picture
        assert window.grab().save(str(REPO / "docs" / "screenshot.png"))


def test_presets_round_trip(qtbot, tmp_path):
    window = MainWindow(make_deps(tmp_path))
    qtbot.addWidget(window)
    dials = window.dials
    dials.dial_rows[DIALS_BY_NAME["smirk"].index].spin.setValue(0.25)
    dials.raw_rows[3].spin.setValue(-0.15)
    dials.intensity_rows["eyes"].spin.setValue(0.5)
    assert dials.presets.save_as("Smirk")
    assert (tmp_path / "presets" / "Smirk.json").is_file()
    dials.reset_all()
    assert not dials.offsets().any() and dials.intensity()["eyes"] == 1.0
    assert dials.presets.load("Smirk")
    assert dials.offsets()[DIALS_BY_NAME["smirk"].index] == pytest.approx(0.25)
    assert dials.offsets()[3] == pytest.approx(-0.15) and dials.intensity()["eyes"] == 0.5
    assert dials.presets.combo.currentText() == "Smirk"
    assert dials.presets.delete("Smirk")
    assert dials.presets.store.names() == [] and dials.presets.combo.count() == 0
    assert not dials.presets.save_as("../escape"), "a path is no preset name"


def test_settings_persist_across_runs(qtbot, tmp_path):
    video = driving_video(tmp_path / "clip.mp4")
    first = open_window(make_deps(tmp_path))
    first.sources.select(SourceSpec.file(video))
    first.dials.dial_rows[DIALS_BY_NAME["eyes"].index].spin.setValue(0.3)
    first.dials.smoothing_row.spin.setValue(0.8)
    qtbot.waitUntil(lambda: first.gallery.count() == 1, timeout=STREAM_TIMEOUT_MS)
    first.close()
    second = open_window(make_deps(tmp_path))
    qtbot.addWidget(second)
    assert second.dials.offsets()[DIALS_BY_NAME["eyes"].index] == pytest.approx(0.3)
    assert second.dials.smoothing() == pytest.approx(0.8)
    assert second.sources.current() == SourceSpec.file(video)
    qtbot.waitUntil(lambda: second.gallery.count() == 1, timeout=STREAM_TIMEOUT_MS)
    assert second.controller.avatars[0].name == "astronaut"


def test_select_remove_and_the_last_avatar_follow_one_rule_in_the_window_and_the_cli_session(qtbot, tmp_path):
    """The same choices in the window's gallery and on a command-line live session end alike: which
    avatar is shown after each removal, and the refusal to remove the last one, in the same words."""
    pictures = {"astronaut": data.astronaut(), "flipped": np.ascontiguousarray(data.astronaut()[:, ::-1]),
                "shifted": np.ascontiguousarray(np.roll(data.astronaut(), 40, axis=1))}
    for name, picture in pictures.items():
        write_image(tmp_path / f"{name}.png", picture)
    window = open_window(make_deps(tmp_path))
    qtbot.addWidget(window)
    refusals: list[str] = []
    window.controller.error.connect(refusals.append)
    qtbot.waitUntil(lambda: window.gallery.count() == 1, timeout=STREAM_TIMEOUT_MS)  # the built-in astronaut
    window.gallery.remove_requested.emit(0)  # replaced by the three files, in order
    qtbot.waitUntil(lambda: len(refusals) == 1, timeout=STREAM_TIMEOUT_MS)
    window.gallery.add_requested.emit([tmp_path / f"{name}.png" for name in pictures])
    qtbot.waitUntil(lambda: window.gallery.count() == 4, timeout=STREAM_TIMEOUT_MS)
    window.gallery.remove_requested.emit(0)
    qtbot.waitUntil(lambda: window.gallery.count() == 3, timeout=STREAM_TIMEOUT_MS)

    def shown_in_window() -> tuple[int, str]:
        controller = window.controller
        assert window.gallery.current() == controller.selected and window.gallery.count() == len(controller.avatars)
        return controller.selected, controller.avatars[controller.selected].name

    session = LiveSession(LiveConfig(), Animator(create_engine(EngineConfig(backend="torch", device="cpu", seeded=True,
                                                                            width=0.125))), ScriptedSource())
    for name, picture in pictures.items():
        session.add_avatar(picture, name)
    session_refusals: list[str] = []

    def in_session(remove: int | None = None, select: int | None = None) -> tuple[int, str]:
        try:
            session.avatars.select(select) if select is not None else session.avatars.remove(remove)
        except LiveAnimError as error:
            session_refusals.append(str(error))
        return session.avatars.selected, session.avatars.current().name

    def in_window(remove: int | None = None, select: int | None = None) -> tuple[int, str]:
        before = len(refusals), window.gallery.count()
        if select is not None:
            window.gallery.select_requested.emit(select)
        else:
            window.gallery.remove_requested.emit(remove)
            qtbot.waitUntil(lambda: (len(refusals), window.gallery.count()) != before, timeout=STREAM_TIMEOUT_MS)
        return shown_in_window()

    steps = ({"select": 2}, {"remove": 2}, {"select": 0}, {"remove": 1}, {"remove": 0})
    assert [in_window(**step) for step in steps] == [in_session(**step) for step in steps] == [
        (2, "shifted"), (1, "flipped"), (0, "astronaut"), (0, "astronaut"), (0, "astronaut")]
    assert refusals[1:] == session_refusals == ["The last avatar cannot be removed: add another one first."]
    assert refusals[0] == session_refusals[0]


def test_a_stream_started_with_no_avatar_loaded_shows_the_default_one_in_the_gallery_too(qtbot, tmp_path):
    """Every remembered portrait failed to load (no face in it): the stream shows the built-in
    astronaut, and so do the gallery and the settings, so the gallery is the stream's list."""
    write_image(tmp_path / "blank.png", np.full((300, 300, 3), 200, np.uint8))
    deps = make_deps(tmp_path)
    deps.settings.avatars = [str(tmp_path / "blank.png")]
    window = MainWindow(deps)
    qtbot.addWidget(window)
    log = FrameLog(window)
    window.show()
    with qtbot.waitSignal(window.controller.error, timeout=STREAM_TIMEOUT_MS) as error:
        window.start_up()
    assert error.args[0].startswith("No face found in blank") and window.gallery.count() == 0
    window.sources.select(SourceSpec.file(driving_video(tmp_path / "driving.mp4")))
    qtbot.waitUntil(lambda: window.controller.has_engine, timeout=STREAM_TIMEOUT_MS)
    window.start_action.trigger()
    qtbot.waitUntil(lambda: len(log.frames) >= 1, timeout=STREAM_TIMEOUT_MS)
    assert window.gallery.count() == 1 and window.gallery.current() == 0
    assert [avatar.name for avatar in window.controller.avatars] == ["astronaut"]
    window.close()
    assert AppSettings.at(tmp_path / "settings.ini").avatars == [DEFAULT_AVATAR]


def test_without_the_face_library_the_window_loads_avatars_uncropped_and_says_so(qtbot, tmp_path, monkeypatch, caplog):
    """As the command line does: where faces cannot be looked for, each portrait's centre square is
    animated as it is, and one status line says so (and what to install)."""
    without_egl(monkeypatch)
    write_image(tmp_path / "me.png", data.astronaut())
    deps = make_deps(tmp_path)
    deps.settings.avatars = [DEFAULT_AVATAR, str(tmp_path / "me.png")]
    window = MainWindow(deps)
    qtbot.addWidget(window)
    messages: list[str] = []
    window.status.messageChanged.connect(messages.append)
    errors: list[str] = []
    window.controller.error.connect(errors.append)
    window.show()
    with caplog.at_level(logging.WARNING):
        window.start_up()
        qtbot.waitUntil(lambda: window.gallery.count() == 2 or bool(errors), timeout=STREAM_TIMEOUT_MS)
    assert not errors and [avatar.box for avatar in window.controller.avatars] == [CropBox(0, 0, 512)] * 2
    said = [m for m in messages if "face library is unavailable" in m]
    assert len(said) == 1 and "astronaut, me" in said[0] and "sudo apt install libegl1" in said[0], messages
    assert [r.getMessage() for r in caplog.records if "face library is unavailable" in r.getMessage()] == said


def test_shortcuts_are_bound(qtbot, tmp_path):
    window = MainWindow(make_deps(tmp_path))
    qtbot.addWidget(window)
    keys = {action.shortcut().toString() for action in window.actions()}
    assert {"Space", "C", "R", "Left", "Right", "Ctrl+0"} <= keys
    window.dials.dial_rows[DIALS_BY_NAME["pitch"].index].spin.setValue(0.2)
    window.reset_action.trigger()
    assert not window.dials.offsets().any()


def test_status_bar_shows_the_engine_optimizing_and_clears_it_when_done(qtbot, tmp_path):
    """The session's events reach the status bar as the controller hands them to the window."""
    window = MainWindow(make_deps(tmp_path))
    qtbot.addWidget(window)
    window.controller.session_event.emit(Optimizing(2, 3, 38.0, False))
    assert window.status.optimizing.text() == "Optimizing for this GPU: 2 of 3, about 40 s left"
    assert window.status.optimizing.isVisibleTo(window)
    window.controller.session_event.emit(Optimized())
    assert not window.status.optimizing.isVisibleTo(window)
    assert window.status.currentMessage() == "Optimized for this GPU: full speed from now on"
    window.controller.session_event.emit(Optimizing(1, 2, None, True))
    assert window.status.optimizing.text().endswith("1 of 2, first time on this GPU: a few minutes")
    window.status.show_idle()  # the stream stopped: the engine goes on optimizing
    assert window.status.optimizing.isVisibleTo(window)
    window.status.show_engine(EngineInfo("torch on cpu", "torch", "fp32"))  # another engine reports its own
    assert not window.status.optimizing.isVisibleTo(window)


@dataclasses.dataclass(frozen=True)
class CompilingModel(ModelSource):
    """Seeded weights on an engine that compiles on the CPU (the window's compile only on CUDA by
    default), with its cache in `cache_dir`."""

    cache_dir: Path = Path()

    def engine_config(self, backend: str, precision: str, weights: Path | None) -> EngineConfig:
        return dataclasses.replace(super().engine_config(backend, precision, weights), compile=True,
                                   cache_dir=self.cache_dir)


def test_the_engine_starts_optimizing_as_the_window_builds_it_before_any_stream(qtbot, tmp_path, monkeypatch):
    """A first start's compiles begin while the user sets up, not at the first frame, and the
    status bar says so with no stream running."""
    use_caches(tmp_path, monkeypatch)
    window = open_window(make_deps(tmp_path, CompilingModel(seeded_width=0.125, cache_dir=tmp_path / "engine")))
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.status.optimizing.isVisibleTo(window), timeout=STREAM_TIMEOUT_MS)
    assert window.status.optimizing.text() == "Optimizing for this GPU: 1 of 2, first time on this GPU: a few minutes"
    assert window.controller.has_engine and window.controller.session is None
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):  # fp16 fails to build here
        with qtbot.waitSignal(window.controller.error, timeout=STREAM_TIMEOUT_MS):
            window.engine_selector.precision.setCurrentText("fp16")
        # the engine in use goes on optimizing, and the status bar says so again at the next polls
        # (not only when its progress changes: the first compile here takes ~30 s)
        qtbot.waitUntil(lambda: window.status.optimizing.isVisibleTo(window), timeout=5000)
    window.close()  # ends the children


def test_background_work_does_not_hide_a_message_the_session_just_gave(qtbot, tmp_path):
    """A warning shown as the engine starts preparing stays readable: the work has a field of its own."""
    window = MainWindow(make_deps(tmp_path))
    qtbot.addWidget(window)
    window.show()
    warning = "Avatars astronaut were not cropped: no face found"
    window.status.show_message(warning)
    window.controller.busy_changed.emit("Preparing the engine (torch, fp16)")
    assert window.status.currentMessage() == warning
    assert window.status.busy_label.text() == "Preparing the engine (torch, fp16)..."
    assert window.status.busy_label.isVisibleTo(window) and window.status.busy.isVisibleTo(window)
    window.controller.busy_changed.emit("")
    assert window.status.currentMessage() == warning and not window.status.busy_label.isVisibleTo(window)


def test_missing_weights_offline_says_what_to_do(qtbot, tmp_path, monkeypatch):
    def offline(**kwargs: object) -> str:
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setenv("LIVEANIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    window = open_window(make_deps(tmp_path, model=ModelSource()))
    qtbot.addWidget(window)
    dialog = window.weights_dialog
    assert dialog is not None and dialog.isVisible()
    assert not window.controller.has_engine
    dialog.download()
    qtbot.waitUntil(lambda: bool(dialog.message.text()), timeout=10_000)
    message = dialog.message.text()
    assert "Could not download the LIA-X weights" in message
    assert "Download lia-x.pt from https://huggingface.co/YaohuiW/LIA-X" in message
    assert str(tmp_path / "cache") in message
    assert dialog.download_button.isEnabled() and dialog.isVisible()
    dialog.reject()


def test_downloaded_weights_show_progress_then_load(qtbot, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def slow_download(repo_id: str, filename: str, cache_dir: str) -> str:
        partial = Path(cache_dir) / "blobs" / "weights.incomplete"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(bytes(2**20))
        time.sleep(1.0)
        return str(partial.rename(partial.with_name(filename)))

    monkeypatch.setenv("LIVEANIM_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url: None)  # the hub answers
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", slow_download)
    window = open_window(make_deps(tmp_path, model=ModelSource()))
    qtbot.addWidget(window)
    dialog = window.weights_dialog
    shown: list[int] = []
    dialog.progress.valueChanged.connect(shown.append)
    with qtbot.waitSignal(window.controller.error, timeout=STREAM_TIMEOUT_MS) as error:
        dialog.download()
    assert shown and shown[-1] > 0, "the progress bar followed the download"
    assert not dialog.isVisible() and window.settings.weights == cache / "hub" / "blobs" / "lia-x.pt"
    assert "lia-x.pt" in error.args[0], "the engine tried the downloaded file"


def test_picking_a_weights_file_builds_the_engine_from_it(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEANIM_CACHE", str(tmp_path / "cache"))
    window = open_window(make_deps(tmp_path, model=ModelSource()))
    qtbot.addWidget(window)
    weights = tmp_path / "not-weights.pt"
    weights.write_text("hello")
    with qtbot.waitSignal(window.controller.error, timeout=STREAM_TIMEOUT_MS) as error:
        window.weights_dialog.choose_file(weights)
    assert f"{weights} is not a PyTorch checkpoint" in error.args[0]
    assert "choose it with File > Get the LIA-X weights... > Choose file..." in error.args[0]
    assert "--" not in error.args[0], "the window's words, not the command line's"
    assert window.settings.weights == weights


def test_dials_have_the_labelled_and_raw_directions(qtbot, tmp_path):
    window = MainWindow(make_deps(tmp_path))
    qtbot.addWidget(window)
    assert len(window.dials.dial_rows) == 14 and len(window.dials.raw_rows) == MOTION_DIM
    row = window.dials.dial_rows[DIALS_BY_NAME["yaw1"].index]
    assert row.spin.minimum() == -0.5 and row.spin.maximum() == 0.5 and row.spin.decimals() == 3
    assert not window.dials.raw_rows[0].slider.isVisibleTo(window), "the advanced panel starts collapsed"


def test_reset_shortcut_by_key(qtbot, tmp_path):
    window = MainWindow(make_deps(tmp_path))
    qtbot.addWidget(window)
    window.show()
    window.activateWindow()
    qtbot.waitActive(window)
    window.dials.dial_rows[DIALS_BY_NAME["roll1"].index].spin.setValue(0.2)
    qtbot.keyClick(window.windowHandle(), Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)
    assert not window.dials.offsets().any()


@pytest.fixture
def ready_window(qtbot, tmp_path) -> MainWindow:
    """A window with its engine built, not streaming."""
    window = open_window(make_deps(tmp_path))
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.controller.has_engine, timeout=STREAM_TIMEOUT_MS)
    return window


def test_still_portrait_is_edited_and_saved(ready_window, qtbot, tmp_path):
    portrait = tmp_path / "portrait.png"
    write_image(portrait, data.astronaut())
    ready_window.dials.dial_rows[DIALS_BY_NAME["yaw1"].index].spin.setValue(0.3)
    dialog = ready_window.open_still_editor()
    dialog.source.set_path(portrait)
    out = tmp_path / "edited.png"
    dialog.save(out)
    qtbot.waitUntil(lambda: dialog.message.text().startswith("Saved"), timeout=STREAM_TIMEOUT_MS)
    assert read_image(out).shape == (512, 512, 3)


def test_animate_from_video_shows_progress_and_cancels(ready_window, qtbot, tmp_path):
    portrait = tmp_path / "portrait.png"
    write_image(portrait, data.astronaut())
    dialog = ready_window.open_animator()
    dialog.source.set_path(portrait)
    dialog.driving.set_path(driving_video(tmp_path / "driving.mp4", frames=3))
    assert dialog.out.path() == tmp_path / "driving_animated.mp4", "the output name is suggested"
    fractions: list[float] = []
    dialog.start()
    dialog._task.on("progress", lambda fraction, text: fractions.append(fraction))
    qtbot.waitUntil(lambda: dialog.message.text().startswith("Saved"), timeout=STREAM_TIMEOUT_MS)
    assert fractions[-1] == 1.0 and dialog.progress.value() == dialog.progress.maximum()
    assert dialog.out.path().stat().st_size > 0
    dialog.out.set_path(tmp_path / "cancelled.mp4")
    dialog.start()
    dialog.cancel()
    qtbot.waitUntil(lambda: dialog.message.text().startswith("Cancelled"), timeout=STREAM_TIMEOUT_MS)
    assert not (tmp_path / "cancelled.mp4").exists() and dialog.start_button.isEnabled()


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="fp16 works on a GPU")
def test_a_failed_engine_build_keeps_the_engine_in_use(ready_window, qtbot):
    with qtbot.waitSignal(ready_window.controller.error, timeout=STREAM_TIMEOUT_MS) as error:
        ready_window.engine_selector.precision.setCurrentText("fp16")
    assert "GPU" in error.args[0]
    qtbot.waitUntil(lambda: ready_window.engine_selector.choice() == ("auto", "fp32"), timeout=STREAM_TIMEOUT_MS)
    assert ready_window.controller.has_engine and "fp32" in ready_window.status.precision.text()


def test_input_preview_marks_a_lost_face(qtbot):
    view = InputView()
    qtbot.addWidget(view)
    view.resize(320, 240)
    view.set_frame(np.full((240, 320, 3), 128, dtype=np.uint8))
    view.set_tracking(CropBox(100, 60, 120), found=False)
    shown = pixels(view.grab())
    red = np.all(shown == (LOST_COLOUR.red(), LOST_COLOUR.green(), LOST_COLOUR.blue()), axis=-1)
    assert red.sum() > 500, "the 'Face lost' badge and the dashed box are drawn"


def test_dropping_files_and_folders_on_the_gallery(qtbot, tmp_path):
    gallery = AvatarThumbnails()
    qtbot.addWidget(gallery)
    folder = tmp_path / "portraits"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (folder / name).write_bytes(b"")
    single = tmp_path / "c.webp"
    single.write_bytes(b"")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder)), QUrl.fromLocalFile(str(single))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(gallery.files_dropped) as dropped:
        gallery.dropEvent(event)
    assert dropped.args[0] == [folder / "a.jpg", folder / "b.png", single]
