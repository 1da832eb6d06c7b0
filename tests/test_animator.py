"""The engine-level animation math reproduces the golden animation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from liveanim.engines import EngineConfig
from liveanim.engines.devices import cpu_runs_bf16
from liveanim.engines.torch_engine.backend import TorchEngine
from liveanim.pipeline.animator import Animator
from liveanim.pipeline.frames import to_uint8
from tests.conftest import assert_image_close


def test_animator_over_torch_engine_matches_golden(golden_model, golden, golden_edit):
    engine = TorchEngine(EngineConfig(backend="torch", device="cpu"), torch.device("cpu"), model=golden_model)
    animator = Animator(engine)
    avatar = animator.encode_avatar(golden["source"])
    alpha = animator.motion(golden["driving"])
    out = animator.render(avatar, alpha - alpha[:1], golden_edit)
    assert_image_close(out, golden["anim"])
    assert_image_close(animator.render(avatar), golden["recon"])


@pytest.mark.skipif(not cpu_runs_bf16(), reason="this CPU has no bf16 instructions (AVX512-BF16, AMX)")
def test_the_bf16_cpu_engine_animates_as_closely_as_bf16_holds_the_golden_animation(golden_model, golden,
                                                                                  golden_edit):
    """bf16 on a CPU with bf16 instructions: the golden animation within the bounds measured when it was
    made (motion codes 1.0e-2, PSNR of the displayed range 40.8 dB; the golden model's output spans
    -1.6..30, so its pixels past 1 are compared as displayed)."""
    engine = TorchEngine(EngineConfig(backend="torch", device="cpu", precision="bf16"), torch.device("cpu"),
                         model=copy.deepcopy(golden_model))
    animator = Animator(engine)
    alpha = animator.motion(golden["driving"])
    out = animator.render(animator.encode_avatar(golden["source"]), alpha - alpha[:1], golden_edit)
    torch.testing.assert_close(alpha, torch.from_numpy(golden["alpha_drive"]), rtol=0, atol=0.02)
    error = (out.clamp(-1, 1) - torch.from_numpy(golden["anim"]).clamp(-1, 1)).square().mean().item()
    assert 10 * math.log10(2**2 / error) >= 38.0


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x).dtype == np.uint8
