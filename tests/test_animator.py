"""The engine-level animation math reproduces the golden animation."""

from __future__ import annotations

import numpy as np
import torch

from liveanim.engines import EngineConfig
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


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x).dtype == np.uint8
