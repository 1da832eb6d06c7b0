"""FP8 operands in the fused convs: the seeded model's error against fp32, next to fp16 operands'.

    python3 scripts/fp8_error.py [--width 1.0] [--calibrate 4] [--evaluate 4] [--out docs/bench/fp8_error_cpu.json]

The convs that `triton_min_side=64` selects (the decoder's and the motion encoder's size-preserving
3x3 convs from 64x64 up) run in their reference form (`fused_impl='reference'`, float32 sums):
their activation scales are calibrated on some frames (a source and driving frames), then OTHER
frames (another source, other driving frames) run with e4m3 operands, and with fp16 operands
(`RoundedOperands`: what the fp16 kernel rounds; fp16 convs are too slow on CPUs for a whole fp16
model), against the model in fp32 reference forms; then e4m3 in the encoder's convs only (source
and motion), and in the decoder's only. Errors: the image's (PSNR over the reference's range, max
and mean absolute) and the motion code's, over all evaluation frames. On a 2-core CPU a pass over
1 source + 4 frames takes ~2.5 min at width 1.0 (~4x that at 2.0).
`scripts/triton_conv_gpu.py`'s `fp8` stage reuses these functions on the GPU.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liveanim.export.graphs import smooth_images  # noqa: E402
from liveanim.model import LIAX  # noqa: E402
from liveanim.model.folding import fold_for_inference  # noqa: E402
from liveanim.model.fp8 import MARGIN, Fp8Conv, RoundedOperands, calibrate  # noqa: E402
from liveanim.model.fused_conv import Operands  # noqa: E402
from liveanim.model.layers import FUSABLE, REFERENCE_FORMS, KernelForms, set_kernel_forms  # noqa: E402
from liveanim.model.seeded import seed_parameters_  # noqa: E402

log = logging.getLogger("fp8_error")
FP8_FORMS = KernelForms(triton_min_side=64, fused_impl="reference")


@dataclass(frozen=True)
class Frames:
    """Calibration and evaluation images (each (N, 3, 512, 512) in [-1, 1]); no image in both."""

    calibration_source: torch.Tensor
    calibration_driving: torch.Tensor
    source: torch.Tensor
    driving: torch.Tensor

    @classmethod
    def seeded(cls, calibrate: int, evaluate: int, seed: int) -> Frames:
        images = smooth_images(2 + calibrate + evaluate, seed=seed)
        return cls(images[:1], images[1:1 + calibrate], images[1 + calibrate:2 + calibrate], images[2 + calibrate:])

    def to(self, device: torch.device) -> Frames:
        return Frames(*(images.to(device) for images in vars(self).values()))


def seeded_model(width: float, seed: int) -> LIAX:
    return seed_parameters_(LIAX(width), seed=seed).eval().requires_grad_(False)


def run_frames(model: LIAX, source: torch.Tensor, driving: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each driving frame as the live loop computes it (one at a time): motion code and image, float32."""
    outputs: dict[str, list[torch.Tensor]] = {"alpha": [], "image": []}
    with torch.inference_mode():
        state = model.encode_source(source.to(dtype))
        for frame in driving.split(1):
            alpha = model.encode_motion(frame.to(dtype).contiguous(memory_format=torch.channels_last))
            outputs["alpha"].append(alpha.float())
            outputs["image"].append(model.render(state, alpha_drive=alpha).float())
    return {key: torch.cat(values) for key, values in outputs.items()}


def errors(actual: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    """Max and mean absolute error, and PSNR over the expected values' range."""
    diff = (actual.double() - expected.double()).abs()
    span = (expected.max() - expected.min()).double().clamp_min(1e-12)
    mse = diff.square().mean()
    return {"max": diff.max().item(), "mean": diff.mean().item(),
            "psnr_db": (10 * torch.log10(span.square() / mse.clamp_min(1e-30))).item()}


def calibrated(model: LIAX, frames: Frames, forms: KernelForms, dtype: torch.dtype, margin: float) -> int:
    """Give `model`'s fused convs FP8 operands calibrated on the calibration frames, measured in the
    reference implementation; `forms` (with their implementation) are set afterwards."""
    set_kernel_forms(model, replace(forms, fused_impl="reference"))
    count = calibrate(model, lambda: run_frames(model, frames.calibration_source, frames.calibration_driving, dtype),
                      margin)
    set_kernel_forms(model, forms)
    return count


def with_operands(model: LIAX, operands: Callable[[Fp8Conv], Operands], under: str = "") -> LIAX:
    """A copy of `model` whose fused convs under `under` (a module-name prefix; all by default) run
    with `operands(their FP8 operands)`, and the others with full-precision operands."""
    other = copy.deepcopy(model)
    for name, layer in other.named_modules():
        if isinstance(layer, FUSABLE) and layer.operands is not None:
            layer.operands = operands(layer.operands) if name.startswith(under) else None
    return other


def cpu_errors(width: float, seed: int, frames: Frames, margin: float) -> dict[str, object]:
    """fp8 and fp16 operands in the fused convs of a float32 model, against its fp32 reference forms."""
    model = seeded_model(width, seed)
    reference = copy.deepcopy(model)
    fold_for_inference(reference, REFERENCE_FORMS)
    began = time.perf_counter()
    truth = run_frames(reference, frames.source, frames.driving, torch.float32)
    log.info("fp32 reference: %.0f s", time.perf_counter() - began)
    del reference
    fold_for_inference(model, FP8_FORMS)
    began = time.perf_counter()
    convs = calibrated(model, frames, FP8_FORMS, torch.float32, margin)
    log.info("calibrated %d convs: %.0f s", convs, time.perf_counter() - began)
    results: dict[str, object] = {"convs_with_fp8_operands": convs}
    variants = {"fp8_operands": lambda: model,
                "fp16_operands": lambda: with_operands(model, lambda _: RoundedOperands()),
                "fp8_operands_encoder_only": lambda: with_operands(model, lambda fp8: fp8, under="enc."),
                "fp8_operands_decoder_only": lambda: with_operands(model, lambda fp8: fp8, under="dec.")}
    for name, variant in variants.items():  # one copy of the model at a time (3.6 GB each at width 2.0)
        began = time.perf_counter()
        outputs = run_frames(variant(), frames.source, frames.driving, torch.float32)
        results[name] = {key: errors(outputs[key], truth[key]) for key in outputs}
        log.info("%s: %s (%.0f s)", name, results[name], time.perf_counter() - began)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=1.0, help="1.0: the largest that runs in ~15 min on 2 cores")
    parser.add_argument("--seed", type=int, default=0, help="the model's weights and the frames")
    parser.add_argument("--calibrate", type=int, default=4, help="driving frames to calibrate on (and one source)")
    parser.add_argument("--evaluate", type=int, default=4, help="other driving frames to measure on (and a source)")
    parser.add_argument("--margin", type=float, default=MARGIN)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/fp8_error_cpu.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_grad_enabled(False)
    began = time.perf_counter()
    frames = Frames.seeded(args.calibrate, args.evaluate, args.seed)
    results = cpu_errors(args.width, args.seed, frames, args.margin)
    report = {"date": datetime.date.today().isoformat(), "what": "scripts/fp8_error.py on the CPU",
              "width": args.width, "seed": args.seed, "calibration_frames": f"1 source + {args.calibrate} driving",
              "evaluation_frames": f"1 other source + {args.evaluate} other driving", "margin": args.margin,
              "fused_convs": "size-preserving 3x3 convs on maps from 64x64 up (triton_min_side=64), reference form, "
                             "float32 sums; everything else float32",
              "against": "the same model in fp32 reference forms",
              "torch": torch.__version__, "seconds": round(time.perf_counter() - began), **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
