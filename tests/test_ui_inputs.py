"""What the desktop app does with values a person can type or load: presets, saved settings,
paths typed into the dialogs. Offscreen, with a small seeded model on the CPU.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import logging  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PyQt6.QtCore import Qt  # noqa: E402
from PyQt6.QtWidgets import QMessageBox, QPushButton  # noqa: E402

from skimage import data  # noqa: E402

from liveanim.errors import Fix, UsageError  # noqa: E402
from liveanim.model import LIAX  # noqa: E402
from liveanim.model.seeded import seed_parameters_  # noqa: E402
from liveanim.motion.dials import DIALS_BY_NAME  # noqa: E402
from liveanim.pipeline.video import write_image  # noqa: E402
from tests.test_offline import cut_short  # noqa: E402
from tests.test_ui import REPO, STREAM_TIMEOUT_MS, make_deps, open_window, ready_window  # noqa: E402, F401
from tests.test_video import driving_frames  # noqa: E402
from liveanim.app.ui.dials_panel import DialsPanel  # noqa: E402
from liveanim.app.ui.main_window import MainWindow  # noqa: E402
from liveanim.app.ui.messages import WINDOW_FIXES  # noqa: E402
from liveanim.app.ui.model_source import ModelSource  # noqa: E402
from liveanim.app.ui.presets import PresetStore  # noqa: E402
from liveanim.app.ui.settings import AppSettings  # noqa: E402

YAW = DIALS_BY_NAME["yaw1"].index

MALFORMED_PRESETS = {
    "a top-level list": ("[0.1, 0.2]", "it holds a list, not an object"),
    "dials as a list": ('{"dials": [0.1, 0.2]}', "'dials' holds a list, not an object"),
    "deeply nested JSON": ("[" * 20_000 + "]" * 20_000, "its JSON is nested too deeply"),
    "a huge file": (" " * 100_000 + "{}", "larger than 64 KiB"),
    "a NaN dial": ('{"dials": {"yaw1": NaN}}', "dial 'yaw1' must be a number from -0.5 to 0.5, got nan"),
    "an infinite direction": ('{"directions": {"5": 1e999}}', "direction 5 must be a number from -0.5 to 0.5"),
    "a dial beyond its range": ('{"dials": {"pout": 3}}', "dial 'pout' must be a number from -0.5 to 0.5, got 3"),
    "a NaN intensity": ('{"intensity": {"head": NaN}}', "the head intensity must be a number from 0 to 2"),
    "direction -1": ('{"directions": {"-1": 0.2}}', "'-1' is no direction"),
    "a dial as text": ('{"dials": {"yaw1": "0.2"}}', "dial 'yaw1' must be a number from -0.5 to 0.5, got '0.2'"),
    "an unknown dial": ('{"dials": {"nose": 0.1}}', "unknown dial 'nose'"),
    "an unknown group": ('{"intensity": {"hair": 1}}', "unknown group 'hair'"),
    "an unknown key": ('{"dial": {"yaw1": 0.1}}', "unknown key 'dial'"),
    "another version": ('{"version": 2, "dials": {}}', "version 2"),
    "null": ("null", "it holds null"),
    "broken JSON": ('{"dials": {', "Expecting"),
    "not text": (b"\xff\xfe\x00binary", "utf-8"),
}


def message_boxes(widget) -> list[QMessageBox]:
    return [box for box in widget.findChildren(QMessageBox) if box.isVisible()]


@pytest.mark.parametrize("case", list(MALFORMED_PRESETS))
def test_a_malformed_preset_shows_why_and_leaves_the_dials_unchanged(qtbot, tmp_path, case):
    content, reason = MALFORMED_PRESETS[case]
    store = PresetStore(tmp_path / "presets")
    panel = DialsPanel(store, smoothing=0.5)
    qtbot.addWidget(panel)
    panel.show()
    panel.dial_rows[YAW].spin.setValue(0.2)
    panel.intensity_rows["mouth"].spin.setValue(0.5)
    before = panel.offsets(), panel.intensity()
    path = tmp_path / "presets" / "Broken.json"
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    panel.presets.refresh(select="Broken")
    load = next(b for b in panel.presets.findChildren(QPushButton) if b.text() == "Load")
    qtbot.mouseClick(load, Qt.MouseButton.LeftButton)
    boxes = message_boxes(panel)
    assert len(boxes) == 1, "one dialog says what is wrong"
    assert str(path) in boxes[0].text() and reason in boxes[0].text()
    assert "Nothing was changed" in boxes[0].text()
    np.testing.assert_array_equal(panel.offsets(), before[0])
    assert panel.intensity() == before[1]


def test_a_preset_of_the_app_still_loads_after_the_checks(qtbot, tmp_path):
    panel = DialsPanel(PresetStore(tmp_path / "presets"), smoothing=0.5)
    qtbot.addWidget(panel)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "Hand.json").write_text(
        '{"version": 1, "dials": {"yaw1": -0.5}, "directions": {"3": 0.25}, "intensity": {"eyes": 2}}')
    assert panel.presets.load("Hand")
    assert panel.offsets()[YAW] == -0.5 and panel.offsets()[3] == 0.25
    assert panel.intensity() == {"head": 1.0, "mouth": 1.0, "eyes": 2.0}
    assert not message_boxes(panel)


BAD_SETTINGS = {
    "dials/offsets": ["nan"] + ["0"] * 39,
    "dials/intensity_head": "nan",
    "dials/intensity_eyes": "7",
    "dials/smoothing": "abc",
    "avatars/current": "zz",
    "engine/backend": "warp-drive",
}


def test_bad_saved_settings_fall_back_to_defaults_with_a_warning(qtbot, tmp_path, caplog):
    settings = AppSettings.at(tmp_path / "settings.ini")
    for key, value in BAD_SETTINGS.items():
        settings._store.setValue(key, value)
    settings.sync()
    with caplog.at_level(logging.WARNING, logger="liveanim.app.ui.settings"):
        window = open_window(make_deps(tmp_path))
    qtbot.addWidget(window)
    assert not window.dials.offsets().any()
    assert window.dials.intensity() == {"head": 1.0, "mouth": 1.0, "eyes": 1.0}
    assert window.dials.smoothing() == 0.5
    assert window.engine_selector.choice()[0] == "auto"
    for key in BAD_SETTINGS:
        assert f"Ignoring the saved setting {key}=" in caplog.text
    assert "dial 'yaw1'" not in caplog.text  # index 0 is no labelled dial
    assert "direction 0 must be a number from -0.5 to 0.5, got nan" in caplog.text


def test_a_nan_offset_saved_by_an_earlier_run_never_reaches_the_dials(qtbot, tmp_path):
    settings = AppSettings.at(tmp_path / "settings.ini")
    offsets = np.zeros(40, np.float32)
    offsets[YAW] = np.nan
    settings.offsets = offsets
    settings.sync()
    window = open_window(make_deps(tmp_path))
    qtbot.addWidget(window)
    assert np.isfinite(window.dials.offsets()).all() and not window.dials.offsets().any()
    window.close()
    assert np.isfinite(AppSettings.at(tmp_path / "settings.ini").offsets).all()


def test_settings_path_helper_reads_back_what_the_window_wrote(tmp_path):
    settings = AppSettings.at(tmp_path / "settings.ini")
    settings.offsets = np.full(40, 0.125, np.float32)
    settings.intensity = {"head": 0.5, "mouth": 2.0, "eyes": 0.0}
    settings.smoothing = 1.0
    settings.sync()
    again = AppSettings.at(Path(tmp_path / "settings.ini"))
    np.testing.assert_array_equal(again.offsets, np.full(40, 0.125, np.float32))
    assert again.intensity == {"head": 0.5, "mouth": 2.0, "eyes": 0.0} and again.smoothing == 1.0


# --- paths typed into the Animate dialog -----------------------------------------------------


def retype(qtbot, edit, text: str) -> None:
    """Clear a line edit and type `text` into it key by key, as a person does."""
    edit.selectAll()
    qtbot.keyClick(edit, Qt.Key.Key_Backspace)
    qtbot.keyClicks(edit, text)


def test_typing_a_driving_video_path_suggests_an_output_that_follows_it(qtbot, tmp_path):
    first, second = tmp_path / "talk.mp4", tmp_path / "clips" / "laugh.mp4"
    second.parent.mkdir()
    for video in (first, second):
        video.write_bytes(b"")  # only the names matter until Animate is pressed
    window = MainWindow(make_deps(tmp_path))
    qtbot.addWidget(window)
    dialog = window.open_animator()
    qtbot.keyClicks(dialog.driving.edit, "/")
    assert dialog.out.edit.text() == "", "a half-typed path suggests nothing"
    qtbot.keyClicks(dialog.driving.edit, str(first)[1:])
    assert dialog.out.path() == tmp_path / "talk_animated.mp4"
    retype(qtbot, dialog.driving.edit, str(second))
    assert dialog.out.path() == second.parent / "laugh_animated.mp4", "the suggestion follows the typed path"
    retype(qtbot, dialog.out.edit, str(tmp_path / "mine.mp4"))
    retype(qtbot, dialog.driving.edit, str(first))
    assert dialog.out.path() == tmp_path / "mine.mp4", "an output the person typed is kept"


def test_the_animate_dialog_says_when_the_driving_video_was_cut_short(ready_window, qtbot, tmp_path):
    portrait = tmp_path / "portrait.png"
    write_image(portrait, data.astronaut())
    dialog = ready_window.open_animator()
    dialog.source.set_path(portrait)
    dialog.driving.set_path(cut_short(tmp_path / "cut.mp4", driving_frames(20), kept=0.5))
    dialog.start()
    qtbot.waitUntil(lambda: dialog.message.text().startswith("Saved"), timeout=STREAM_TIMEOUT_MS)
    assert "but only" in dialog.message.text() and "of the 20 frames of" in dialog.message.text()
    assert "cut.mp4" in dialog.message.text() and dialog.out.path().stat().st_size > 0


# --- the window speaks its own language ---------------------------------------------------------


def test_every_fix_has_window_words_without_command_line_options():
    assert set(WINDOW_FIXES) == set(Fix)
    for fix, words in WINDOW_FIXES.items():
        assert "--" not in words and "main.py" not in words, fix
        assert "--" in fix.value, f"{fix} is command-line advice"


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="fp16 works on a GPU")
def test_a_precision_the_cpu_lacks_points_to_the_toolbar(ready_window, qtbot):
    with qtbot.waitSignal(ready_window.controller.error, timeout=STREAM_TIMEOUT_MS) as error:
        ready_window.engine_selector.precision.setCurrentText("fp16")
    assert error.args[0] == "fp16 needs a GPU. On the CPU choose fp32 in the toolbar's Precision list."


def test_a_portrait_without_a_face_is_explained_without_command_line_options(ready_window, qtbot, tmp_path):
    blank = tmp_path / "blank.png"
    write_image(blank, np.full((300, 300, 3), 200, np.uint8))
    with qtbot.waitSignal(ready_window.controller.error, timeout=STREAM_TIMEOUT_MS) as error:
        ready_window.controller.add_avatars([str(blank)])
    assert error.args[0] == "No face found in blank: use a photo where one face is clearly visible."


# --- `python main.py --weights PATH` ------------------------------------------------------------


def wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert process.poll() is None, f"the app ended early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()}"
        time.sleep(0.2)
    return log.read_text()


def test_the_app_starts_with_the_weights_given_on_the_command_line(tmp_path):
    weights = tmp_path / "mine.pt"
    torch.save({name: tensor.clone() for name, tensor in seed_parameters_(LIAX(0.125), 0).state_dict().items()},
               weights)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "LIVEANIM_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("LIVEANIM_SEEDED_WIDTH", None)
    log = tmp_path / "app.log"
    with log.open("w") as out:
        app = subprocess.Popen([sys.executable, str(REPO / "main.py"), "--weights", str(weights)], cwd=REPO,
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_line(log, f"loading weights from {weights}", app)
        wait_for_line(log, "engine: torch on cpu", app)
        app.send_signal(signal.SIGINT)  # the app closes its window on Ctrl+C
        assert app.wait(timeout=60) == 0, log.read_text()
    finally:
        if app.poll() is None:
            app.kill()
    assert "Traceback" not in log.read_text()
    assert AppSettings.at(tmp_path / "config" / "LiveAnim" / "LiveAnim.conf").weights == weights


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "0", "abc"])
def test_a_seeded_width_that_is_no_width_is_refused(monkeypatch, value):
    monkeypatch.setenv("LIVEANIM_SEEDED_WIDTH", value)
    with pytest.raises(UsageError, match=f"LIVEANIM_SEEDED_WIDTH='{value}' is not a width"):
        ModelSource.from_environment()
