"""FP8 (e4m3) operands for the fused 3x3 convs: their scales, their calibration, their reference form.

Ada, Hopper and Blackwell tensor cores multiply e4m3 operands at twice fp16's rate. e4m3 keeps 3
mantissa bits and saturates at +-448, so each operand is divided by a scale before it is rounded:
- weights per output channel (amax over (in, 3, 3) / 448): each output channel uses the whole
  range, whatever its norm (the demodulation rescales the outputs afterwards anyway);
- activations per tensor: the amax of the conv's prologue output (x * style + shift, what the
  kernel multiplies) measured over calibration frames, times `MARGIN` for frames beyond those
  (larger values saturate); one scale per conv, so the kernel's epilogue folds it into the
  per-output-channel factor beside the weight's.
The products of two e4m3 values are exact in float32; between the reference form
(`conv3x3_fp8_reference`) and the kernel only the sums differ: their order, and on Hopper the
tensor cores' own (narrower) accumulation within each chunk of 64 products.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# Calibration frames do not show every frame's extremes; e4m3's relative precision is the same
# over its whole normal range, so headroom costs only the smallest values (below amax * 2^-15).
MARGIN = 2.0


def quantize(values: torch.Tensor) -> torch.Tensor:
    """Round to e4m3 (nearest, ties to even), saturating at +-448 as the GPU's conversion does."""
    return values.clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


@dataclass(frozen=True)
class RoundedOperands:
    """Both operands rounded to `dtype`, no scales, summed in float32: what the fp16 kernel does to
    a conv's operands, emulated in a float32 model (fp16 convs are slow on CPUs), to compare FP8 with."""

    dtype: torch.dtype = torch.float16


@dataclass
class ActivationRange:
    """What a calibration pass measures for one conv: the amax of its prologue output."""

    amax: float = 0.0
    calls: int = 0

    def observe(self, values: torch.Tensor) -> None:
        self.amax = max(self.amax, values.detach().abs().max().item())
        self.calls += 1


@dataclass(frozen=True)
class Fp8Conv:
    """One conv's FP8 operands, made on the device of the weight (after the model has moved).

    rows:         (out, 9 * in) e4m3, the weight / weight_scale, ordered (tap, in) per output
                  channel: the rows the kernel reads.
    weight_scale: (out,) float32, amax of each output channel's weight / 448.
    act_scale:    the input's scale: the prologue output / act_scale is what is rounded to e4m3.
    """

    rows: torch.Tensor
    weight_scale: torch.Tensor
    act_scale: float

    @classmethod
    def of(cls, weight: torch.Tensor, amax: float, margin: float = MARGIN) -> Fp8Conv:
        """weight: (out, in, 3, 3) as the conv uses it; amax: its calibrated prologue amax."""
        out_channels = weight.shape[0]
        rows = weight.detach().float().permute(0, 2, 3, 1).reshape(out_channels, -1)
        peak = rows.abs().amax(dim=1)
        weight_scale = torch.where(peak > 0, peak / E4M3_MAX, 1.0)
        act_scale = max(amax, torch.finfo(torch.float32).tiny) * margin / E4M3_MAX
        return cls(quantize(rows / weight_scale[:, None]), weight_scale, act_scale)

    def input_factors(self, scale: torch.Tensor | None, shift: torch.Tensor | None,
                      batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prologue's (scale, shift), (B, in) float32, with 1 / act_scale folded in: the kernel
        rounds x * scale + shift to e4m3 as it loads x."""
        channels = self.rows.shape[1] // 9
        if scale is None:
            scale = torch.ones(batch, channels, device=self.rows.device)
        scale = scale.float() / self.act_scale
        return scale, None if shift is None else shift.float() / self.act_scale

    def output_factor(self) -> torch.Tensor:
        """(out,) float32: act_scale * weight_scale, what the epilogue multiplies the sums by."""
        return self.weight_scale * self.act_scale

    def weight(self) -> torch.Tensor:
        """The e4m3 weight values as float32 (out, in, 3, 3), not yet times weight_scale."""
        out_channels, taps_in = self.rows.shape
        return self.rows.float().view(out_channels, 3, 3, taps_in // 9).permute(0, 3, 1, 2)


def conv3x3_fp8_reference(x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None,
                          fp8: Fp8Conv) -> torch.Tensor:
    """conv3x3(x * scale + shift, weight) with both operands in e4m3, summed in float32, as the
    kernel computes it (before demodulation): the rounded input, the conv of the e4m3 values (each
    product exact), times act_scale * weight_scale. (B, out, H, W) float32."""
    factor, offset = fp8.input_factors(scale, shift, x.shape[0])
    prologue = x.float() * factor[:, :, None, None]
    if offset is not None:
        prologue = prologue + offset[:, :, None, None]
    sums = F.conv2d(quantize(prologue).float(), fp8.weight(), padding=1)
    return sums * fp8.output_factor()[:, None, None]


def calibrate(model: nn.Module, run: Callable[[], object], margin: float = MARGIN) -> int:
    """Measure the prologue amax of every conv that runs fused, then give each its `Fp8Conv`.

    model: its forms must run the fused convs in the reference implementation
           (`KernelForms(triton_min_side=..., fused_impl="reference")`), which measures ranges.
    run:   runs the calibration frames through `model`.
    Returns how many convs got FP8 operands; the others keep theirs.
    """
    from liveanim.model.layers import FUSABLE

    convs = [layer for layer in model.modules() if isinstance(layer, FUSABLE)]
    for layer in convs:
        layer.operands = ActivationRange()
    with torch.no_grad():
        run()
    ranges = [layer.operands for layer in convs]
    for layer, seen in zip(convs, ranges):
        layer.operands = Fp8Conv.of(layer.conv_weight(), seen.amax, margin) if seen.calls else None
    measured = [seen.amax for seen in ranges if seen.calls]
    log.info("FP8: %d convs calibrated (prologue amax %.3g .. %.3g, margin %g)", len(measured),
             min(measured, default=0.0), max(measured, default=0.0), margin)
    return len(measured)
