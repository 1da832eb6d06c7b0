"""Motion filtering, the neutral reference and the face-lost behaviour, on plain arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from liveanim.motion.controller import Dials, MotionConfig, MotionController
from liveanim.motion.dials import DIALS_BY_NAME, check_intensity, direction_index, edit_vector
from liveanim.motion.filters import OneEuroConfig, OneEuroFilter, SmoothingRange
from liveanim.motion.neutral import NeutralConfig, NeutralReference

FPS = 30.0
DIM = 40


def run_filter(filt: OneEuroFilter, values: np.ndarray) -> np.ndarray:
    return np.stack([filt(value, i / FPS) for i, value in enumerate(values)])


def test_one_euro_passes_a_constant_through_exactly():
    constant = np.linspace(-0.3, 0.3, DIM, dtype=np.float32)
    out = run_filter(OneEuroFilter(OneEuroConfig(min_cutoff=0.5, beta=0.5)), np.repeat(constant[None], 20, 0))
    np.testing.assert_array_equal(out, np.repeat(constant[None], 20, 0))


def test_one_euro_settles_exactly_on_a_constant_after_noise():
    rng = np.random.default_rng(0)
    noisy = rng.normal(0, 0.05, (30, DIM)).astype(np.float32)
    constant = np.full((300, DIM), 0.2, dtype=np.float32)
    out = run_filter(OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.5)), np.concatenate([noisy, constant]))
    np.testing.assert_allclose(out[-1], constant[-1], atol=1e-6)


def test_one_euro_reduces_jitter():
    rng = np.random.default_rng(1)
    jitter = rng.normal(0, 0.02, (120, DIM)).astype(np.float32)
    out = run_filter(OneEuroFilter(SmoothingRange().at(0.5)), jitter)
    assert np.std(out[30:]) < 0.5 * np.std(jitter[30:])


def test_one_euro_follows_a_step():
    values = np.zeros((60, DIM), dtype=np.float32)
    values[10:] = 0.3
    out = run_filter(OneEuroFilter(SmoothingRange().at(0.5)), values)
    assert 0.0 < out[11, 0] < 0.3  # smoothed, not instant
    np.testing.assert_allclose(out[10 + int(FPS)], 0.3, atol=0.01)  # there within a second


def test_smoothing_zero_is_raw():
    values = np.random.default_rng(2).normal(0, 0.1, (10, DIM)).astype(np.float32)
    np.testing.assert_array_equal(run_filter(OneEuroFilter(SmoothingRange().at(0.0)), values), values)
    with pytest.raises(ValueError, match="smoothing"):
        SmoothingRange().at(1.5)


def test_neutral_is_captured_from_the_first_still_run():
    reference = NeutralReference(NeutralConfig(frames=5, max_spread=0.01))
    rng = np.random.default_rng(3)
    moving = rng.normal(0, 0.2, (10, DIM)).astype(np.float32)
    still = np.full(DIM, 0.1, dtype=np.float32)
    assert np.array_equal(reference.observe(moving[0]), moving[0])  # the first frame stands in
    for code in moving[1:]:
        reference.observe(code)
    assert reference.capturing
    for _ in range(5):
        reference.observe(still + rng.normal(0, 0.001, DIM).astype(np.float32))
    assert not reference.capturing
    np.testing.assert_allclose(reference.value, still, atol=0.002)
    reference.observe(moving[3])  # once captured, motion does not move it
    np.testing.assert_allclose(reference.value, still, atol=0.002)


def test_calibrate_takes_the_next_still_run_and_keeps_the_old_one_meanwhile():
    reference = NeutralReference(NeutralConfig(frames=3))
    first, second = np.zeros(DIM, np.float32), np.full(DIM, 0.5, np.float32)
    for _ in range(3):
        reference.observe(first)
    reference.calibrate()
    reference.observe(second)
    np.testing.assert_array_equal(reference.value, first)
    reference.observe(second)
    reference.observe(second)
    np.testing.assert_array_equal(reference.value, second)


def test_neutral_settles_for_the_stillest_run_when_never_still():
    reference = NeutralReference(NeutralConfig(frames=3, max_spread=1e-6, patience=12))
    rng = np.random.default_rng(4)
    for i in range(12):
        reference.observe(rng.normal(0, 0.01 if 5 <= i < 8 else 0.3, DIM).astype(np.float32))
    assert not reference.capturing
    assert np.abs(reference.value).max() < 0.05  # the mean of the calm frames 5..7


def controller(**overrides) -> MotionController:
    config = MotionConfig(neutral=NeutralConfig(frames=2), smoothing=0.0, hold_s=0.5, ease_s=1.0)
    return MotionController(dataclasses.replace(config, **overrides))


def test_motion_is_relative_to_the_neutral_and_scaled_per_group():
    ctrl = controller()
    neutral, pose = np.full(DIM, 0.1, np.float32), np.full(DIM, 0.4, np.float32)
    ctrl.update(neutral, 0.0)
    ctrl.update(neutral, 0.1)
    np.testing.assert_allclose(ctrl.update(pose, 0.2), 0.3, atol=1e-6)
    ctrl.set_intensity("head", 0.0)
    motion = ctrl.update(pose, 0.3)
    yaw, mouth = DIALS_BY_NAME["yaw1"].index, DIALS_BY_NAME["mouth"].index
    assert motion[yaw] == 0.0 and motion[mouth] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="group"):
        ctrl.set_intensity("hair", 1.0)


def test_face_lost_holds_then_eases_to_neutral_then_glides_back():
    ctrl = controller(smoothing=0.5)
    neutral, pose = np.zeros(DIM, np.float32), np.full(DIM, 0.4, np.float32)
    t = 0.0
    for code in [neutral, neutral] + [pose] * 60:
        last = ctrl.update(code, t)
        t += 1 / FPS
    lost_at = t
    held = [ctrl.update(None, lost_at + dt) for dt in (0.0, 0.2, 0.45)]
    for motion in held:
        np.testing.assert_array_equal(motion, last)
    halfway = ctrl.update(None, lost_at + 0.5 + 0.5)
    assert 0.1 * last[0] < halfway[0] < 0.9 * last[0]
    later = ctrl.update(None, lost_at + 0.5 + 0.8)
    assert 0.0 < later[0] < halfway[0]
    np.testing.assert_array_equal(ctrl.update(None, lost_at + 2.0), np.zeros(DIM))
    back = ctrl.update(pose, lost_at + 2.0 + 1 / FPS)  # no jump back to the pose: it glides
    assert 0.0 < back[0] < 0.4


def test_edit_travels_beside_the_motion():
    ctrl = controller()
    edit = np.zeros(DIM, np.float32)
    edit[DIALS_BY_NAME["smirk"].index] = 0.3
    ctrl.set_edit(edit)
    assert np.array_equal(ctrl.update(None, 0.0), np.zeros(DIM))  # no face yet: rest pose
    np.testing.assert_array_equal(ctrl.edit, edit)
    with pytest.raises(ValueError, match="40 numbers"):
        ctrl.set_edit(np.zeros(3))


def test_dials_apply_as_one_value_and_a_bad_one_changes_none_of_them():
    """What a new session is handed: edit, intensities and smoothing together."""
    ctrl = controller()
    edit = edit_vector({"smirk": 0.3})
    ctrl.set_dials(Dials(edit=edit, intensity={"head": 0.0}, smoothing=0.0))
    assert ctrl.dials.smoothing == 0.0 and ctrl.intensity["head"] == 0.0 and ctrl.intensity["mouth"] == 1.0
    np.testing.assert_array_equal(ctrl.edit, edit)
    head = [d.index for d in DIALS_BY_NAME.values() if d.group == "head"]
    ctrl.update(np.zeros(DIM, np.float32), 0.0)
    ctrl.update(np.zeros(DIM, np.float32), 1 / FPS)  # the neutral pose is captured
    turned = np.full(DIM, 0.5, np.float32)
    motion = ctrl.update(turned, 2 / FPS)
    np.testing.assert_array_equal(motion[head], 0.0)
    np.testing.assert_allclose(np.delete(motion, head), 0.5, atol=1e-6)  # smoothing 0: raw
    before = ctrl.dials
    with pytest.raises(ValueError, match="head intensity"):
        ctrl.set_dials(Dials(edit=np.zeros(DIM, np.float32), intensity={"head": float("nan")}, smoothing=0.9))
    assert ctrl.dials is before
    with pytest.raises(ValueError):
        before.edit[0] = 1.0  # a frozen value: its edit vector cannot be changed in place


# --- the one rule for values that move the avatar (liveanim.motion.limits) ---------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0.6, -0.51, "0.2", True, None])
def test_a_dial_offset_outside_its_range_is_refused_by_name(value):
    with pytest.raises(ValueError, match=r"dial 'yaw1' must be a number from -0.5 to 0.5"):
        edit_vector({"yaw1": value})


def test_raw_directions_keep_to_the_same_range_also_when_added_to_a_dial():
    with pytest.raises(ValueError, match=r"direction 5 must be a number from -0.5 to 0.5, got nan"):
        edit_vector(directions={5: float("nan")})
    yaw2 = DIALS_BY_NAME["yaw2"].index
    with pytest.raises(ValueError, match=rf"dial 'yaw2' \(direction {yaw2}\) .* got 0.8"):
        edit_vector({"yaw2": 0.4}, {yaw2: 0.4})
    edit = edit_vector({"yaw2": 0.5}, {3: -0.5})
    assert edit.dtype == np.float32 and edit[yaw2] == 0.5 and edit[3] == -0.5


@pytest.mark.parametrize("text", ["-1", "40", "5.0", " 5", "x", "", "1e1", "٣"])
def test_a_direction_is_a_plain_index_of_the_dictionary(text):
    with pytest.raises(ValueError, match="directions are the numbers 0..39"):
        direction_index(text)
    assert direction_index("39") == 39 and direction_index("0") == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, 2.5])
def test_an_intensity_outside_0_to_2_is_refused_and_never_reaches_the_motion(value):
    with pytest.raises(ValueError, match="the head intensity must be a number from 0 to 2"):
        check_intensity({"head": value})
    ctrl = controller()
    with pytest.raises(ValueError, match="head intensity"):
        ctrl.set_intensity("head", value)
    assert ctrl.intensity["head"] == 1.0
    np.testing.assert_array_equal(ctrl.update(np.ones(DIM, np.float32), 0.0), np.zeros(DIM))


@pytest.mark.parametrize("value", [float("nan"), -0.01, 1.5])
def test_smoothing_outside_0_to_1_is_refused(value):
    with pytest.raises(ValueError, match="smoothing .*must be a number from 0 to 1"):
        controller().set_smoothing(value)
    with pytest.raises(ValueError, match="smoothing"):
        MotionConfig(smoothing=value)
