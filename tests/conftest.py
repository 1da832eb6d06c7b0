"""Shared fixtures: the golden data in ../shared/golden and small seeded models.

The face model comes from ../shared/models (set for this process and the commands it starts):
tests never download it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO.parent / "shared" / "golden"
FACE_MODEL = REPO.parent / "shared" / "models" / "face_landmarker.task"

os.environ["LIVEANIM_FACE_MODEL"] = str(FACE_MODEL)


def golden_recipe():
    """The `make_state_dict` module that ships with the golden data."""
    if not GOLDEN_DIR.is_dir():
        pytest.fail(f"golden data not found at {GOLDEN_DIR}: CI must clone the repo next to shared/")
    sys.path.insert(0, str(GOLDEN_DIR))
    import make_state_dict

    return make_state_dict


def to_model_input(u8: np.ndarray) -> torch.Tensor:
    """uint8 (H,W,3) or (T,H,W,3) -> float (B,3,H,W) in [-1, 1], the official normalization."""
    x = torch.from_numpy(np.ascontiguousarray(u8)).float().div(255.0).sub(0.5).mul(2.0)
    return x.permute(2, 0, 1)[None] if x.ndim == 3 else x.permute(0, 3, 1, 2)


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / "golden_w0.5_seed0.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def golden_state() -> dict[str, torch.Tensor]:
    return golden_recipe().make_state_dict("layout_w0.5.tsv", seed=0)


@pytest.fixture(scope="session")
def golden_model(golden_state):
    from liveanim.model import LIAX

    model = LIAX(0.5)
    model.load_state_dict(golden_state, strict=True)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def golden_edit(golden) -> torch.Tensor:
    edit = torch.zeros(40)
    edit[torch.from_numpy(golden["motion_id"]).long()] = torch.from_numpy(golden["motion_value"]).float()
    return edit


@pytest.fixture(scope="session")
def tiny_model():
    """A width-0.125 LIA-X with seeded weights: the same code paths as the released model, fast."""
    from liveanim.model import LIAX

    torch.manual_seed(0)
    return LIAX(0.125).eval().requires_grad_(False)


@pytest.fixture
def folded_convs(monkeypatch) -> list:
    """The modulated convs that ran with their modulation in the weight (`KernelForms.eager_forms`),
    one entry per call, from now on in this test."""
    from liveanim.model.layers import ModulatedConv2d

    calls: list = []
    folded = ModulatedConv2d.folded
    monkeypatch.setattr(ModulatedConv2d, "folded", lambda self, *args: calls.append(self) or folded(self, *args))
    return calls


def assert_image_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    """The golden README's image tolerance: mean abs <= 1e-3, 99.9th percentile <= 5e-2."""
    diff = (actual.detach().float().cpu() - torch.from_numpy(expected)).abs().flatten()
    mean = diff.mean().item()
    p999 = torch.quantile(diff[:: max(1, diff.numel() // 10_000_000)], 0.999).item()
    assert mean <= 1e-3 and p999 <= 5e-2, f"mean abs {mean:.2e}, p99.9 {p999:.2e}"


@pytest.fixture(scope="session")
def seeded_fp16_export(tmp_path_factory) -> Path:
    """README's `main.py export --out DIR --precision fp16` at width 0.125 with seeded weights (the
    export checks itself: onnx.checker, then ONNX Runtime against PyTorch fp32). Shared by the
    export and engine tests: exporting takes a minute on the CPU."""
    from liveanim.app.cli import main

    folder = tmp_path_factory.mktemp("seeded-fp16")
    assert main(["export", "--seeded", "0.125", "--out", str(folder), "--precision", "fp16"]) == 0
    return folder
