"""liveanim.face on a real photo (skimage's astronaut) and on synthetic boxes and frames."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from skimage import data

from liveanim.app.cli import main
from liveanim.errors import FaceDetectionUnavailable, NoFaceError
from liveanim.face import (
    FACE_MODEL_ENV,
    CropBox,
    CropConfig,
    FaceBox,
    FaceDetector,
    FaceTracker,
    TrackerConfig,
    crop_box,
    crop_image,
    crop_portrait,
    paste_back,
)
from tests.conftest import FACE_MODEL

# Where the astronaut's face is in the 512x512 photo, roughly (left, top, right, bottom).
FACE_REGION = (170, 60, 280, 170)
SLACK = 12  # pixels a detector's box may differ from that rough region


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as shared:
        yield shared


def shifted(image: np.ndarray, dx: int, dy: int = 0) -> np.ndarray:
    return np.roll(image, (dy, dx), axis=(0, 1))


def zoomed(image: np.ndarray, scale: float) -> np.ndarray:
    """The image magnified about the astronaut's face."""
    centre = ((FACE_REGION[0] + FACE_REGION[2]) / 2, (FACE_REGION[1] + FACE_REGION[3]) / 2)
    matrix = cv2.getRotationMatrix2D(centre, 0, scale)
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def assert_near_face_region(face: FaceBox, dx: float = 0, dy: float = 0, scale: float = 1) -> None:
    """The box lies where the face is (allowing SLACK) and is about the face's size."""
    left, top, right, bottom = FACE_REGION
    assert left + dx - SLACK <= face.left and face.right <= right + dx + SLACK
    assert top + dy - SLACK <= face.top and face.bottom <= bottom + dy + SLACK
    assert 0.75 * (right - left) <= face.width / scale <= 1.1 * (right - left)
    assert 0.75 * (bottom - top) <= face.height / scale <= 1.1 * (bottom - top)


def contains(box: CropBox, face: FaceBox) -> bool:
    return box.left <= face.left and box.top <= face.top and face.right <= box.right and face.bottom <= box.bottom


# --- detector -------------------------------------------------------------------------------


def test_detects_the_astronauts_face(detector: FaceDetector, astronaut: np.ndarray) -> None:
    face = detector.detect(astronaut)
    assert face is not None and face.score > 0.5
    assert_near_face_region(face)


def test_picks_the_largest_of_several_faces(detector: FaceDetector, astronaut: np.ndarray) -> None:
    """A smaller face beside the subject (here scored higher by mediapipe) is not the one."""
    picture = np.zeros((512, 512 + 384, 3), np.uint8)
    picture[:, :512] = astronaut
    picture[:384, 512:] = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    assert_near_face_region(detector.detect(picture))


def test_detects_a_face_in_a_mirrored_view(detector: FaceDetector, astronaut: np.ndarray) -> None:
    """Webcam previews are often flipped views (non-contiguous arrays)."""
    face = detector.detect(astronaut[:, ::-1])
    assert face is not None
    centre_x = (face.left + face.right) / 2
    assert abs(centre_x - (512 - (FACE_REGION[0] + FACE_REGION[2]) / 2)) < SLACK


def test_finds_a_face_that_fills_the_picture(detector: FaceDetector, astronaut: np.ndarray) -> None:
    """A portrait cropped to the face (the landmarker must see a face that fills the picture)."""
    close_up = crop_image(astronaut, CropBox(170, 65, 110), 512)
    face = detector.detect(close_up)
    assert face is not None
    assert face.width > 300


def test_landmarks_outline_the_face(astronaut: np.ndarray) -> None:
    with FaceDetector() as detector:
        landmarks = detector.landmarks(astronaut)
    assert landmarks is not None
    assert landmarks.points.shape == (478, 2)
    assert landmarks.box.left == landmarks.points[:, 0].min()
    assert landmarks.box.bottom == landmarks.points[:, 1].max()
    assert_near_face_region(landmarks.box)


def test_no_landmarks_on_a_blank_frame() -> None:
    with FaceDetector() as detector:
        assert detector.landmarks(np.zeros((480, 640, 3), np.uint8)) is None


def test_starting_the_detector_writes_nothing_to_the_console(capfd, astronaut: np.ndarray) -> None:
    with FaceDetector() as detector:
        detector.detect(astronaut)
        detector.landmarks(astronaut)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_importing_the_package_does_not_load_mediapipe() -> None:
    code = "import sys, liveanim.face; assert 'mediapipe' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_commands_take_the_face_model_option(tmp_path, monkeypatch, caplog) -> None:
    """--face-model wins over $LIVEANIM_FACE_MODEL (here a file that does not exist)."""
    monkeypatch.setenv(FACE_MODEL_ENV, str(tmp_path / "not-there.task"))
    source = tmp_path / "source.png"
    cv2.imwrite(str(source), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    command = ["edit-image", "--source", str(source), "--out", str(tmp_path / "out.png"), "--seeded", "0.125",
               "--device", "cpu"]
    assert main([*command, "--face-model", str(FACE_MODEL)]) == 0
    assert cv2.imread(str(tmp_path / "out.png")).shape == (512, 512, 3)
    missing = tmp_path / "missing.task"
    assert main(["--face-model", str(missing), *command]) == 2
    assert f"The face model {missing} does not exist" in caplog.text and "--face-model PATH" in caplog.text


def without_egl(monkeypatch) -> None:
    """mediapipe's native library fails to load as on a Linux server without libEGL: CI has the
    library, so only the loader (ctypes.CDLL, as mediapipe calls it) is made to fail."""
    from mediapipe.tasks.python.core import mediapipe_c_bindings

    def cannot_open(path: str) -> None:
        raise OSError("libEGL.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(mediapipe_c_bindings, "_shared_lib", None)
    monkeypatch.setattr(mediapipe_c_bindings, "ctypes", SimpleNamespace(CDLL=cannot_open))


def test_a_face_library_that_cannot_load_is_one_error_naming_what_to_install(monkeypatch) -> None:
    without_egl(monkeypatch)
    with pytest.raises(FaceDetectionUnavailable) as raised:
        FaceDetector()  # when it is made, not on some later frame
    message = str(raised.value)
    assert "libEGL.so.1: cannot open shared object file" in message
    assert "sudo apt install libegl1" in message and "--no-crop" in message


def test_without_mediapipe_the_detector_says_how_to_install_it(monkeypatch) -> None:
    for name in ["mediapipe", *(name for name in sys.modules if name.startswith("mediapipe."))]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError, as when not installed
    with pytest.raises(FaceDetectionUnavailable, match='pip install "mediapipe>=1.2"'):
        FaceDetector()


def test_offline_commands_without_the_face_library_exit_2_unless_no_crop(tmp_path, monkeypatch, caplog) -> None:
    without_egl(monkeypatch)
    source = tmp_path / "source.png"
    cv2.imwrite(str(source), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    command = ["edit-image", "--source", str(source), "--out", str(tmp_path / "out.png"), "--seeded", "0.125",
               "--device", "cpu"]
    with caplog.at_level(logging.ERROR):
        assert main(command) == 2
    assert "sudo apt install libegl1" in caplog.text and not (tmp_path / "out.png").exists()
    assert main([*command, "--no-crop"]) == 0
    assert cv2.imread(str(tmp_path / "out.png")).shape == (512, 512, 3)


# --- crop rule ------------------------------------------------------------------------------


def test_crop_box_follows_the_official_rule() -> None:
    # 100x100 face: 25 px each side, 37.5 above; square of the shorter side, centred.
    assert crop_box(FaceBox(200, 200, 300, 300, 1), (1000, 1000, 3)) == CropBox(175, 168, 150)


def test_crop_box_widens_the_short_side_of_a_wide_face() -> None:
    # 200x100 face: the height margin grows to 1.0 so the widened box is nearly square.
    assert crop_box(FaceBox(200, 300, 400, 400, 1), (1000, 1000, 3)) == CropBox(150, 175, 300)


@pytest.mark.parametrize(
    ("face", "frame_shape", "expected"),
    [
        (FaceBox(10, 10, 110, 110, 1), (480, 640, 3), CropBox(0, 0, 135)),  # top-left corner
        (FaceBox(560, 400, 640, 480, 1), (480, 640, 3), CropBox(540, 375, 100)),  # bottom-right
        (FaceBox(100, 50, 700, 650, 1), (1280, 720, 3), CropBox(0, 40, 720)),  # tall frame
        (FaceBox(400, 50, 600, 250, 1), (300, 1000, 3), CropBox(350, 0, 300)),  # wide frame
    ],
)
def test_crop_box_near_frame_borders(face: FaceBox, frame_shape: tuple, expected: CropBox) -> None:
    assert crop_box(face, frame_shape) == expected


def test_crop_box_is_always_a_square_inside_the_frame_around_the_face() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = rng.integers(64, 2000, size=2)
        size = rng.uniform(0.05, 0.6) * min(height, width)
        face_w, face_h = size, size * rng.uniform(0.7, 1.4)
        left, top = rng.uniform(0, width - face_w), rng.uniform(0, height - face_h)
        face = FaceBox(left, top, left + face_w, top + face_h, 1)
        box = crop_box(face, (height, width, 3))
        assert box.size >= 0.9 * min(face_w, face_h) and box.inside((height, width))
        assert box.left <= (face.left + face.right) / 2 <= box.right
        assert box.top <= (face.top + face.bottom) / 2 <= box.bottom


def test_crop_box_helpers() -> None:
    box = CropBox(10, 20, 100)
    assert (box.right, box.bottom) == (110, 120)
    assert box.scaled(2) == CropBox(20, 40, 200)
    assert CropBox(300, 0, 340).scaled(0.5).right == 320  # still touches a 640-wide frame's edge
    assert box.inside((120, 110)) and not box.inside((119, 110))


def test_crop_portrait_of_the_astronaut(detector: FaceDetector, astronaut: np.ndarray) -> None:
    crop, box = crop_portrait(astronaut, detector)
    face = detector.detect(astronaut)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    assert box == crop_box(face, astronaut.shape) and box.inside(astronaut.shape) and contains(box, face)
    for margin in (face.left - box.left, box.right - face.right):
        assert margin >= 0.25 * face.width - 1
    assert face.top - box.top > box.bottom - face.bottom > 0.1 * face.height  # room for hair
    assert np.array_equal(crop, cv2.resize(astronaut[box.slices], (512, 512), interpolation=cv2.INTER_CUBIC))


def test_crop_portrait_output_size_follows_the_config(detector: FaceDetector, astronaut: np.ndarray) -> None:
    crop, _ = crop_portrait(astronaut, detector, CropConfig(size=256))
    assert crop.shape == (256, 256, 3)


@pytest.mark.parametrize(
    "image",
    [np.zeros((480, 640, 3), np.uint8), np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)],
    ids=["blank", "noise"],
)
def test_crop_portrait_without_a_face_says_what_to_do(detector: FaceDetector, image: np.ndarray) -> None:
    with pytest.raises(NoFaceError) as error:
        crop_portrait(image, detector, source_name="holiday.jpg")
    message = str(error.value)
    assert message.startswith("No face found in holiday.jpg:")
    assert "--no-crop" in message and "one face is clearly visible" in message


def test_crop_portrait_without_a_name_makes_its_own_detector() -> None:
    with pytest.raises(NoFaceError, match="No face found in the image"):
        crop_portrait(np.zeros((64, 64, 3), np.uint8))


def test_crop_image_shrinks_by_averaging() -> None:
    image = np.zeros((1200, 1200, 3), np.uint8)
    image[:, 1::2] = 200  # a pattern that aliasing would turn into stripes
    crop = crop_image(image, CropBox(100, 100, 1000), 256)
    assert crop.shape == (256, 256, 3)
    assert np.all(np.abs(crop.astype(int) - 100) <= 5)


# --- paste-back -----------------------------------------------------------------------------


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def test_paste_back_leaves_the_rest_of_the_frame_alone(frame: np.ndarray, astronaut: np.ndarray) -> None:
    box = CropBox(100, 80, 200)
    before = frame.copy()
    out = paste_back(frame, astronaut, box, feather=0.1)
    assert np.array_equal(frame, before), "the input frame must not be modified"
    outside = np.ones(frame.shape[:2], bool)
    outside[box.slices] = False
    assert np.array_equal(out[outside], frame[outside])


def test_paste_back_reproduces_the_crop_in_its_centre(frame: np.ndarray) -> None:
    crop = np.random.default_rng(3).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    out = paste_back(frame, crop, CropBox(100, 80, 200), feather=0.1)
    inner = out[80 + 20 : 80 + 180, 100 + 20 : 100 + 180]
    assert np.array_equal(inner, crop[20:180, 20:180])


def test_paste_back_edges_fade_into_the_frame(frame: np.ndarray) -> None:
    crop = np.full((512, 512, 3), 255, np.uint8)
    out = paste_back(frame, crop, CropBox(100, 80, 200), feather=0.1).astype(int)
    row = 180
    edge, middle = out[row, 100] - frame[row, 100], out[row, 110] - frame[row, 110]
    full = 255 - frame[row, 110].astype(int)
    assert np.all(np.abs(edge) <= 0.05 * 255 + 1)  # the outermost pixel is nearly the frame
    assert np.all(middle >= 0.2 * full) and np.all(middle <= 0.8 * full)  # halfway through the ramp


def test_paste_back_keeps_edges_on_the_frame_border_hard(frame: np.ndarray) -> None:
    crop = np.random.default_rng(4).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    out = paste_back(frame, crop, CropBox(0, 0, 200), feather=0.1)
    assert np.array_equal(out[:100, :100], crop[:100, :100])  # top and left lie on the border
    assert not np.array_equal(out[:100, 199], crop[:100, 199])  # the right edge still fades


def test_paste_back_clips_a_box_reaching_past_the_frame(frame: np.ndarray) -> None:
    crop = np.random.default_rng(5).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    out = paste_back(frame, crop, CropBox(540, -50, 200), feather=0.0)
    assert np.array_equal(out[:150, 540:], crop[50:, :100])
    assert np.array_equal(out[150:], frame[150:]) and np.array_equal(out[:, :540], frame[:, :540])


def test_paste_back_rejects_a_feather_wider_than_half_the_box(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="feather"):
        paste_back(frame, frame[:100, :100], CropBox(0, 0, 100), feather=0.6)


# --- tracker --------------------------------------------------------------------------------


SETTLE = 8  # frames the video landmarker takes to settle on a still face (its box moves < 0.1 px after)


def boxes(tracker: FaceTracker, frames: list[np.ndarray]) -> list[CropBox | None]:
    return [tracker.track(frame).box for frame in frames]


def test_tracker_is_still_on_a_still_face(astronaut: np.ndarray) -> None:
    with FaceTracker() as tracker:
        boxes(tracker, [astronaut] * SETTLE)
        assert len(set(boxes(tracker, [astronaut] * 10))) == 1


def test_tracker_ignores_one_pixel_jitter(astronaut: np.ndarray) -> None:
    """Once on the jittering face (the first frames' box may still move once), the crop holds."""
    jitter = [shifted(astronaut, dx, dy) for dx, dy in [(1, 0), (-1, 1), (0, -1), (1, 1)] * 3]
    with FaceTracker() as tracker:
        boxes(tracker, jitter)
        assert len(set(boxes(tracker, jitter * 2))) == 1


def test_tracker_follows_a_move_quickly(astronaut: np.ndarray) -> None:
    with FaceTracker() as tracker:
        start = boxes(tracker, [astronaut] * 3)[-1]
        moved = boxes(tracker, [shifted(astronaut, 40, 20)] * 4)
    assert moved[0].left - start.left >= 25  # most of the way on the first frame
    assert moved[-1].left - start.left == pytest.approx(40, abs=5)
    assert moved[-1].top - start.top == pytest.approx(20, abs=5)


def test_tracker_follows_a_zoom(astronaut: np.ndarray) -> None:
    with FaceTracker() as tracker:
        start = boxes(tracker, [astronaut] * 3)[-1]
        closer = boxes(tracker, [zoomed(astronaut, 1.25)] * 4)[-1]
    assert closer.size / start.size == pytest.approx(1.25, abs=0.06)


def test_tracker_crop_is_the_official_crop_of_the_face(astronaut: np.ndarray) -> None:
    with FaceTracker(config=TrackerConfig(crop=CropConfig(increase=0.5))) as tracker:
        result = tracker.track(astronaut)
    face = FaceBox(*result.landmarks.min(axis=0), *result.landmarks.max(axis=0), score=1.0)
    assert result.found and result.box == crop_box(face, astronaut.shape, CropConfig(increase=0.5))


def test_tracker_reports_a_lost_face_and_recovers(astronaut: np.ndarray) -> None:
    blank = np.zeros_like(astronaut)
    with FaceTracker() as tracker:
        assert tracker.track(blank).box is None  # nothing seen yet
        last = tracker.track(astronaut).box
        for _ in range(3):
            lost = tracker.track(blank)
            assert not lost.found and lost.landmarks is None
            assert lost.box == last  # the crop holds so the avatar does not jump
        back = tracker.track(shifted(astronaut, 60))
    assert back.found and back.landmarks is not None
    assert back.box.left - last.left == pytest.approx(60, abs=8)


def test_tracker_reset_forgets_the_past(astronaut: np.ndarray) -> None:
    target = shifted(astronaut, 4, 3)  # within the deadband of the unshifted face
    with FaceTracker() as fresh:
        expected = fresh.track(target).box
    with FaceTracker() as tracker:
        boxes(tracker, [astronaut] * 3)
        tracker.reset()
        assert tracker.track(target).box == expected


def test_tracker_config_rejects_a_deadband_past_snap() -> None:
    with pytest.raises(ValueError, match="deadband"):
        TrackerConfig(deadband=0.3, snap=0.2)


def test_the_tracking_benchmark_follows_the_face_through_its_clip(tmp_path) -> None:
    """scripts/bench_face_tracking.py (README's tracker numbers): on its synthetic clip, where the face
    is on every frame, the tracker finds it nearly always and the crop stays still while the head does."""
    import json

    result = subprocess.run([sys.executable, "scripts/bench_face_tracking.py", "--label", "test", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    clip = json.loads((tmp_path / "face_tracking_test.json").read_text())["clips"]["astronaut_head_motion"]
    assert clip["frames"] == 360 and clip["found_fraction"] >= 0.95
    assert clip["still_part_crop_motion_px_per_frame_mean"] < 1.0
