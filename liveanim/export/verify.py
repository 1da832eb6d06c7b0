"""An export checks itself: the ONNX checker, then ONNX Runtime (CPU) against PyTorch fp32.

Errors are measured on a scale so that one tolerance fits every model width: motion codes and
latents against max(1, max|reference|), images and feature maps against max(1, mean|reference|).
fp32 uses the golden README's numbers on that scale; fp16 is judged against the fp32 model with
bounds that catch a broken graph (a wrong op, an overflow) rather than rounding.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from liveanim.contract import GraphSpec
from liveanim.errors import EngineError

log = logging.getLogger(__name__)

CODE_OUTPUTS = frozenset({"z", "alpha"})
P999_SAMPLES = 2_000_000  # elements used for the 99.9th percentile of large tensors


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted scaled errors of one precision.

    code_max:   max abs error of z / alpha, over max(1, max|reference|).
    image_mean: mean abs error of images and feature maps, over max(1, mean|reference|).
    image_p999: 99.9th percentile abs error of images and feature maps, same scale.
    """

    code_max: float
    image_mean: float
    image_p999: float


TOLERANCES = {
    "fp32": Tolerance(code_max=1e-4, image_mean=1e-3, image_p999=5e-2),
    # measured on the CPU (ONNX Runtime): scaled image mean 4e-3 / p99.9 5e-2 for the golden
    # width-0.5 model, 8e-3 / 9e-2 for seeded width 0.125; a broken op errs by ~1
    "fp16": Tolerance(code_max=1e-4, image_mean=5e-2, image_p999=0.5),
}


@contextmanager
def exact_fp32() -> Iterator[None]:
    """No TF32 while computing references (it matters only where the model runs on a GPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_onnx(path: Path) -> None:
    """onnx.checker by path (the only way it reads external data of graphs over 2 GB)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise EngineError(f"the exported graph {path} is not valid ONNX: {error}. The export is broken; "
                          "please report this.") from error


def run_onnx_cpu(path: Path, spec: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Run one exported graph with ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: t.detach().float().cpu().numpy() for name, t in zip(spec.input_names, inputs)}
    outputs = session.run(spec.output_names, feeds)
    return {name: torch.from_numpy(np.asarray(out)) for name, out in zip(spec.output_names, outputs)}


def errors(actual: torch.Tensor, expected: torch.Tensor, is_code: bool) -> dict[str, float]:
    """Scaled error metrics of one output (see the module docstring)."""
    diff = (actual.float().cpu() - expected.float().cpu()).abs().flatten()
    if is_code:
        scale = max(1.0, expected.abs().max().item())
        return {"max": diff.max().item() / scale}
    scale = max(1.0, expected.abs().mean().item())
    sample = diff[:: max(1, diff.numel() // P999_SAMPLES)]
    return {"mean": diff.mean().item() / scale, "p999": torch.quantile(sample, 0.999).item() / scale}


def within(metrics: dict[str, float], tolerance: Tolerance, is_code: bool) -> bool:
    if is_code:
        return metrics["max"] <= tolerance.code_max
    return metrics["mean"] <= tolerance.image_mean and metrics["p999"] <= tolerance.image_p999


def compare_outputs(graph: str, actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                    tolerance: Tolerance) -> dict[str, dict[str, float]]:
    """Every output's scaled errors; raises EngineError naming each output out of tolerance."""
    report, failures = {}, []
    for name, reference in expected.items():
        is_code = name in CODE_OUTPUTS
        if not torch.isfinite(actual[name]).all():
            failures.append(f"{name}: non-finite values")
            continue
        report[name] = errors(actual[name], reference, is_code)
        if not within(report[name], tolerance, is_code):
            failures.append(f"{name}: {_format(report[name])}")
    if failures:
        raise EngineError(f"the exported {graph} graph disagrees with PyTorch beyond {tolerance}: "
                          + "; ".join(failures) + ". The export is broken; please report this.")
    return report


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.2e}" for key, value in metrics.items())
