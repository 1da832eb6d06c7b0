"""The offline modes: end to end through `main.py`'s entry point on a tiny seeded model, and
the motion and edits they hand to the Animator.

The driving video is a real photo (skimage's astronaut) with synthetic head motion and a
tone. The model has random weights, so the end-to-end tests check what a user sees of the
files (length, frame rate, size, sound, errors); the math (motion relative to the first
driving frame, the sweep's edits) is checked on what the modes ask of the Animator.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from skimage import data

from liveanim.app.cli import main
from liveanim.engines import EngineConfig, create_engine
from liveanim.motion.dials import edit_vector
from liveanim.pipeline import offline
from liveanim.pipeline.animator import Animator, Avatar
from liveanim.pipeline.offline import OfflineConfig, Sweep
from tests.test_video import FPS, driving_frames, make_clip, probe

TINY = ["--seeded", "0.125", "--device", "cpu"]
FRAMES = 6
REPO = Path(__file__).resolve().parents[1]


def run_main(*args: str) -> subprocess.CompletedProcess:
    """`python main.py ARGS` as a person runs it: its exit code and what it printed."""
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    cv2.imwrite(str(folder / "source.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "blank.png"), np.full((400, 300, 3), 200, np.uint8))
    return {
        "source": folder / "source.png",
        "blank": folder / "blank.png",
        "driving": make_clip(folder / "driving.mp4", driving_frames(FRAMES)),
        "faceless": make_clip(folder / "faceless.mp4", np.zeros((2, 256, 256, 3), np.uint8)),
    }


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_animate_keeps_length_fps_and_sound(media, tmp_path):
    out = tmp_path / "anim.mp4"
    assert main(["animate", "--source", str(media["source"]), "--driving", str(media["driving"]),
                 "--out", str(out), "--chunk", "4", *TINY]) == 0
    video = probe(out)
    assert video.frames.shape == (FRAMES, 512, 512, 3)
    assert video.fps == FPS
    assert video.audio_seconds == pytest.approx(FRAMES / FPS, abs=0.1)


def test_animate_without_crop_at_another_size(media, tmp_path):
    out = tmp_path / "small.mp4"
    assert main(["animate", "--source", str(media["blank"]), "--driving", str(media["driving"]),
                 "--out", str(out), "--no-crop", "--size", "256", "--dial", "yaw1=0.2", *TINY]) == 0
    video = probe(out)
    assert video.frames.shape == (FRAMES, 256, 256, 3)
    assert video.fps == FPS


def test_edit_video_keeps_length_fps_and_sound(media, tmp_path):
    out = tmp_path / "edited.mp4"
    assert main(["edit-video", "--video", str(media["driving"]), "--out", str(out),
                 "--dial", "mouth=0.3", "--direction", "5=-0.2", *TINY]) == 0
    video = probe(out)
    assert video.frames.shape == (FRAMES, 512, 512, 3)
    assert video.fps == FPS
    assert video.audio_seconds == pytest.approx(FRAMES / FPS, abs=0.1)


def test_edit_image_dial_changes_the_picture(media, tmp_path):
    plain, turned = tmp_path / "plain.png", tmp_path / "turned.png"
    common = ["edit-image", "--source", str(media["source"]), "--size", "300", *TINY]
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--out", str(turned), "--dial", "yaw1=0.4"]) == 0
    assert read_png(plain).shape == read_png(turned).shape == (300, 300, 3)
    assert not np.array_equal(read_png(plain), read_png(turned))  # PNG is lossless: any change shows


def test_manipulate_writes_the_sweep(media, tmp_path):
    out = tmp_path / "sweep.mp4"
    assert main(["manipulate", "--source", str(media["source"]), "--out", str(out),
                 "--dial", "mouth=0.4", "--steps", "1", "--fps", "12", *TINY]) == 0
    video = probe(out)
    assert len(video.frames) == 4  # 0 -> +e -> 0 -> -e -> 0, one frame per leg
    assert video.fps == 12 and video.audio_seconds is None


def test_missing_video_is_a_usage_error_naming_it(media, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["edit-video", "--video", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o.mp4"), *TINY])
    assert exit_info.value.code == 2
    assert "nope.mp4" in capsys.readouterr().err


def test_faceless_source_names_the_file(media, tmp_path, caplog):
    out = tmp_path / "o.png"
    assert main(["edit-image", "--source", str(media["blank"]), "--out", str(out), *TINY]) == 2
    assert "No face found in" in caplog.text and "blank.png" in caplog.text
    assert not out.exists()


def test_faceless_driving_video_fails_before_writing(media, tmp_path, caplog):
    out = tmp_path / "o.mp4"
    assert main(["animate", "--source", str(media["source"]), "--driving", str(media["faceless"]),
                 "--out", str(out), *TINY]) == 2
    assert "first frame of" in caplog.text and "faceless.mp4" in caplog.text
    assert not out.exists()


@pytest.mark.parametrize("edit, message", [(["--dial", "foo=1"], "unknown dial 'foo'"),
                                           ([], "at least one nonzero --dial")])
def test_bad_dials_are_refused(media, tmp_path, caplog, edit, message):
    out = tmp_path / "o.mp4"
    assert main(["manipulate", "--source", str(media["source"]), "--out", str(out), *edit, *TINY]) == 2
    assert message in caplog.text
    assert not out.exists()


def test_odd_video_size_is_refused(media, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["animate", "--source", str(media["source"]), "--driving", str(media["driving"]),
              "--out", str(tmp_path / "o.mp4"), "--size", "301", *TINY])
    assert exit_info.value.code == 2
    assert "even" in capsys.readouterr().err


class RecordingAnimator(Animator):
    """The real motion encoder, and a record of what each mode asks to encode and render
    (the decoder is skipped: its output is checked in test_animator.py)."""

    def __init__(self) -> None:
        super().__init__(create_engine(EngineConfig(device="cpu", seeded=True, width=0.125)))
        self.sources: list[np.ndarray] = []
        self.driving: list[np.ndarray] = []
        self.motions: list[torch.Tensor] = []
        self.edits: list[np.ndarray] = []

    def encode_avatar(self, crop: np.ndarray) -> Avatar:
        self.sources.append(crop)
        return super().encode_avatar(crop)

    def motion(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        self.driving.extend(np.asarray(frames))
        return super().motion(frames)

    def render(self, avatar: Avatar, motion: torch.Tensor | None = None,
               edit: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        edits = np.zeros((1, 40), np.float32) if edit is None else np.asarray(edit, np.float32).reshape(-1, 40)
        if motion is None:
            motion = torch.zeros(len(edits), 40)
        edits = np.broadcast_to(edits, (len(motion), 40))
        self.edits.extend(edits)
        self.motions.extend(motion)
        return torch.zeros(len(motion), 3, 512, 512)


def test_animation_moves_relative_to_the_first_driving_frame(media, tmp_path):
    animator = RecordingAnimator()
    edit = edit_vector({"smirk": 0.2})
    offline.animate(animator, media["source"], media["driving"], tmp_path / "o.mp4", edit, OfflineConfig(chunk=4))
    motions = torch.stack(animator.motions)
    assert len(motions) == FRAMES
    assert torch.equal(motions[0], torch.zeros(40))  # the first frame shows the source as it is
    assert all(motion.abs().max() > 0 for motion in motions[1:])  # then the head moves
    assert all(np.array_equal(e, edit) for e in animator.edits)


def test_video_editing_starts_from_the_videos_first_frame(media, tmp_path):
    animator = RecordingAnimator()
    offline.edit_video(animator, media["driving"], tmp_path / "o.mp4", edit_vector({"eyes": 0.3}))
    assert len(animator.sources) == 1 and np.array_equal(animator.sources[0], animator.driving[0])
    assert len(animator.motions) == FRAMES and torch.equal(animator.motions[0], torch.zeros(40))


def test_manipulation_sweeps_out_and_back(media, tmp_path):
    animator = RecordingAnimator()
    edit = edit_vector({"mouth": 0.4})
    offline.manipulate(animator, media["source"], tmp_path / "o.mp4", edit, OfflineConfig(chunk=3), Sweep(steps=2))
    factors = [float(e @ edit / (edit @ edit)) for e in animator.edits]
    assert factors == pytest.approx([0.5, 1, 0.5, 0, -0.5, -1, -0.5, 0])
    assert all(motion.abs().max() == 0 for motion in animator.motions)  # no driving video


# --- values refused where they enter ---------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (["--dial", "yaw1=nan"], "dial 'yaw1' must be a number from -0.5 to 0.5, got nan"),
    (["--direction", "5=inf"], "direction 5 must be a number from -0.5 to 0.5, got inf"),
    (["--direction=-1=0.2"], "'-1' is no direction: directions are the numbers 0..39"),
])
def test_a_bad_dial_exits_2_with_a_message_and_writes_nothing(media, tmp_path, edit, message):
    out = tmp_path / "o.png"
    result = run_main("edit-image", "--source", str(media["source"]), "--out", str(out), *edit, *TINY)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("option, message", [
    (["--intensity", "head=nan"], "--intensity: the head intensity must be a number from 0 to 2, got nan"),
    (["--intensity", "hair=1"], "--intensity: unknown group 'hair'"),
    (["--smoothing", "nan"], "--smoothing must be a number from 0 to 1, got nan"),
])
def test_live_refuses_a_bad_intensity_or_smoothing_before_the_model_loads(tmp_path, caplog, option, message):
    broken = tmp_path / "broken.pt"
    broken.write_text("not weights: loading them would fail")
    assert main(["live", "--video", str(broken), "--weights", str(broken), *option]) == 2
    assert message in caplog.text and "not a PyTorch checkpoint" not in caplog.text


# --- outputs checked before any model work ---------------------------------------------------


def broken_weights(folder: Path) -> Path:
    """A weights file that fails the moment anything tries to load it."""
    path = folder / "not-weights.pt"
    path.write_text("loading these weights would fail")
    return path


def command(name: str, media: dict[str, Path], out: Path) -> list[str]:
    inputs = {"animate": ["--source", str(media["source"]), "--driving", str(media["driving"])],
              "edit-video": ["--video", str(media["driving"])],
              "manipulate": ["--source", str(media["source"]), "--dial", "yaw1=0.2"],
              "edit-image": ["--source", str(media["source"])]}
    return [name, *inputs[name], "--out", str(out)]


def blocked_folder(tmp_path: Path) -> Path:
    """A folder that cannot exist: a file has its parent's name (refused also to root)."""
    (tmp_path / "taken").write_text("a file, not a folder")
    return tmp_path / "taken" / "outputs"


@pytest.mark.parametrize("name, suffix", [("animate", ".mp4"), ("edit-video", ".mp4"), ("manipulate", ".mp4"),
                                          ("edit-image", ".png")])
def test_an_output_folder_that_cannot_be_made_is_refused_before_the_model_loads(media, tmp_path, caplog,
                                                                                name, suffix):
    out = blocked_folder(tmp_path) / f"result{suffix}"
    assert main([*command(name, media, out), "--weights", str(broken_weights(tmp_path)), "--device", "cpu"]) == 2
    assert f"Cannot write into the folder {out.parent}" in caplog.text
    assert "not a PyTorch checkpoint" not in caplog.text, "the weights were never loaded"


@pytest.mark.parametrize("make_out, message", [
    (lambda tmp: tmp, "is a folder: give the output a file name, e.g."),
    (lambda tmp: tmp / "edited.txt", "name it .png, .jpg or .webp"),
    (lambda tmp: tmp / "source.png", "is also an input"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(media, tmp_path, caplog,
                                                                            make_out, message):
    source = tmp_path / "source.png"
    source.write_bytes(media["source"].read_bytes())
    before = source.read_bytes()
    out = make_out(tmp_path)
    assert main(["edit-image", "--source", str(source), "--out", str(out),
                 "--weights", str(broken_weights(tmp_path)), "--device", "cpu"]) == 2
    assert message in caplog.text and "not a PyTorch checkpoint" not in caplog.text
    assert source.read_bytes() == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_the_model_loads(media, tmp_path, caplog):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main([*command("animate", media, folder / "anim.mp4"), "--weights", str(broken_weights(tmp_path))]) == 2
    finally:
        folder.chmod(0o755)
    assert f"Cannot write into the folder {folder}" in caplog.text


def test_a_missing_output_folder_is_created(media, tmp_path):
    out = tmp_path / "new" / "deeper" / "sweep.mp4"
    assert main([*command("manipulate", media, out), "--steps", "1", "--size", "64", *TINY]) == 0
    assert len(probe(out).frames) == 4


def cut_short(path: Path, frames: np.ndarray, kept: float) -> Path:
    """An mp4 whose index comes first (as web videos have it), cut after `kept` of its bytes:
    players and decoders read the frames that are left and stop."""
    whole = path.with_name(f"whole-{path.name}")
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        video = container.add_stream("libx264", rate=FPS)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * kept)])
    return path


def test_a_driving_video_cut_short_is_reported_with_how_much_was_read(media, tmp_path, caplog):
    driving = cut_short(tmp_path / "cut.mp4", driving_frames(30), kept=0.5)
    animator = RecordingAnimator()
    with caplog.at_level(logging.WARNING):
        written = offline.animate(animator, media["source"], driving, tmp_path / "o.mp4", config=OfflineConfig(crop=False))
    assert 0 < written.frames < 28 and len(animator.motions) == written.frames
    assert f"only {written.frames} of the 30 frames of {driving} could be read" in written.note
    assert written.note in caplog.text


def test_a_complete_video_has_nothing_to_report(media, tmp_path):
    written = offline.edit_video(RecordingAnimator(), media["driving"], tmp_path / "o.mp4")
    assert written.frames == FRAMES and written.note == ""


def test_the_command_line_still_names_its_options(media, tmp_path, caplog):
    out = tmp_path / "o.png"
    assert main(["edit-image", "--source", str(media["source"]), "--out", str(out), "--precision", "fp16", *TINY]) == 2
    assert "fp16 needs a GPU. On the CPU use --precision fp32." in caplog.text


def test_weights_before_the_command_are_the_commands_weights(media, tmp_path, caplog, capsys):
    weights = broken_weights(tmp_path)
    out = tmp_path / "o.png"
    assert main(["--weights", str(weights), "edit-image", "--source", str(media["source"]), "--out", str(out),
                 "--device", "cpu"]) == 2
    assert f"{weights} is not a PyTorch checkpoint" in caplog.text
    with pytest.raises(SystemExit) as exit_info:
        main(["--weights", str(weights), "devices"])
    assert exit_info.value.code == 2 and "devices takes no --weights" in capsys.readouterr().err
