"""A 3x3 convolution with its modulation and its whole epilogue in one Triton kernel.

Implicit GEMM on an image's pixels: the output tile (pixels x output channels) accumulates, in
float32, products of input tiles (pixels x input channels, shifted by one of the 9 taps, zeros
outside the map) with weight tiles (input channels x output channels). The input tile is scaled
per input channel as it is loaded (the style, and a GroupNorm folded in as scale and shift), and
the accumulator is finished before it is stored (demodulation, bias, leaky ReLU with its gain,
a residual with its gains): each output map is written once and no intermediate at all.
In FP8 mode (`liveanim.model.fp8`) the weight rows are e4m3, the scaled input tile is rounded to
e4m3 (saturating) as it is loaded, the tensor cores multiply e4m3 pairs into float32, and the
epilogue multiplies the sums by act_scale * weight_scale per output channel first.

Imported only where Triton is installed (`liveanim.model.fused_conv` decides); the kernel is
compiled on its first call, per GPU and shape, never at import.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from liveanim.model.fp8 import E4M3, E4M3_MAX
from liveanim.model.fused_conv import LEAKY_GAIN, LEAKY_SLOPE


def _configs() -> list[triton.Config]:
    """A few tile shapes for the autotuner (large maps want large tiles); one small tile under
    Triton's CPU interpreter, which runs every tile in numpy and would otherwise time them all."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16})]
    shapes = ((128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
              (128, 64, 64, 4, 4), (64, 128, 64, 4, 4))
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)
            for m, n, k, warps, stages in shapes]


@triton.autotune(configs=_configs(), key=["C_IN", "C_OUT", "HW", "HAS_SCALE", "HAS_SHIFT", "FP8"])
@triton.jit
def _conv3x3_kernel(x_ptr, w_ptr, out_ptr, scale_ptr, shift_ptr, demod_ptr, bias_ptr, alpha_ptr, res_ptr,
                    factor_ptr, H, W, HW, C_IN, C_OUT, sxb, sxc, sxh, sxw, srb, src, srh, srw, beta,
                    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_DEMOD: tl.constexpr,
                    HAS_BIAS: tl.constexpr, ACTIVATE: tl.constexpr, HAS_ALPHA: tl.constexpr,
                    HAS_RESIDUAL: tl.constexpr, IEEE: tl.constexpr, SLOPE: tl.constexpr, GAIN: tl.constexpr,
                    FP8: tl.constexpr, FP8_MAX: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    pixels = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    lanes = tl.arange(0, BLOCK_K)
    row, col = pixels // W, pixels % W
    in_map, in_outs = pixels < HW, outs < C_OUT
    x_image = x_ptr + batch * sxb
    # Triton's builtins only, no @jit helpers (tl.cdiv, tl.zeros): its CPU interpreter stopped running
    # those once Inductor had compiled in the same process (tests/test_prefill.py before this file's tests)
    chunks = (C_IN + BLOCK_K - 1) // BLOCK_K
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for step in range(0, 9 * chunks):  # one flat loop (tap, channel chunk): Triton pipelines it
        tap = step // chunks
        channels = (step - tap * chunks) * BLOCK_K + lanes
        y, x = row + tap // 3 - 1, col + tap % 3 - 1
        valid = (in_map & (y >= 0) & (y < H) & (x >= 0) & (x < W))[:, None] & (channels < C_IN)[None, :]
        a = tl.load(x_image + y[:, None] * sxh + x[:, None] * sxw + channels[None, :] * sxc, mask=valid, other=0.0)
        w = tl.load(w_ptr + outs[None, :] * (9 * C_IN) + (tap * C_IN + channels)[:, None],
                    mask=(channels < C_IN)[:, None] & in_outs[None, :], other=0.0)
        if HAS_SCALE:  # the prologue: style (and a folded GroupNorm) per input channel
            vector = batch * C_IN + channels
            a32 = a.to(tl.float32) * tl.load(scale_ptr + vector, mask=channels < C_IN, other=0.0).to(tl.float32)[None, :]
            if HAS_SHIFT:  # the conv pads the normalized map with zeros, not the shifted ones
                shift = tl.load(shift_ptr + vector, mask=channels < C_IN, other=0.0).to(tl.float32)
                a32 = tl.where(valid, a32 + shift[None, :], 0.0)
            if FP8:  # e4m3 saturates (the GPU's conversion would too; explicit, for every backend)
                a32 = tl.minimum(tl.maximum(a32, -FP8_MAX), FP8_MAX)
            a = a32.to(w.dtype)
        if FP8:  # Hopper's FP8 tensor cores accumulate with fewer bits than float32 (about 14 kept, as
            acc += tl.dot(a, w)  # reported): they sum one chunk's BLOCK_K products, float32 adds the chunks
        elif IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    if FP8:  # back from the operands' scales: act_scale * weight_scale per output channel
        acc *= tl.load(factor_ptr + outs, mask=in_outs, other=0.0)[None, :]
    if HAS_DEMOD:
        acc *= tl.load(demod_ptr + batch * C_OUT + outs, mask=in_outs, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + outs, mask=in_outs, other=0.0).to(tl.float32)[None, :]
    if ACTIVATE:
        acc = tl.where(acc >= 0, acc, acc * SLOPE) * GAIN
    if HAS_ALPHA:
        acc *= tl.load(alpha_ptr + outs, mask=in_outs, other=0.0).to(tl.float32)[None, :]
    inside = in_map[:, None] & in_outs[None, :]
    if HAS_RESIDUAL:
        skip = res_ptr + batch * srb + row[:, None] * srh + col[:, None] * srw + outs[None, :] * src
        acc = (acc + tl.load(skip, mask=inside, other=0.0).to(tl.float32)) * beta
    out = out_ptr + batch * HW * C_OUT + pixels[:, None] * C_OUT + outs[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=inside)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None,
            demod: torch.Tensor | None, bias: torch.Tensor | None, alpha: torch.Tensor | None,
            residual: torch.Tensor | None, beta: float, activate: bool,
            out_factor: torch.Tensor | None = None) -> torch.Tensor:
    """The fused conv (see `liveanim.model.fused_conv.conv3x3_fused` for the arguments); the
    result is channels-last, in x's dtype. With `out_factor` (out,) float32, FP8 operands: `weight`
    is `Fp8Conv.rows` (e4m3), and `scale` (required) and `shift` have 1 / act_scale folded in."""
    batch, c_in, height, width = x.shape
    c_out = weight.shape[0]
    fp8 = out_factor is not None
    assert not fp8 or (weight.dtype == E4M3 and weight.shape == (c_out, 9 * c_in) and scale is not None)
    # (tap, in) per output: a view if channels-last
    rows = weight if fp8 else weight.permute(0, 2, 3, 1).reshape(c_out, 9 * c_in).to(x.dtype)
    out = torch.empty((batch, c_out, height, width), device=x.device, dtype=x.dtype,
                      memory_format=torch.channels_last)
    vectors = [t.contiguous() if t is not None else x for t in (scale, shift, demod, bias, alpha, out_factor)]
    skip = residual if residual is not None else out
    hw = height * width

    def grid(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(hw, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]), batch

    _conv3x3_kernel[grid](
        x, rows, out, *vectors[:5], skip, vectors[5], height, width, hw, c_in, c_out, *x.stride(), *skip.stride(),
        float(beta), HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, HAS_DEMOD=demod is not None,
        HAS_BIAS=bias is not None, ACTIVATE=activate, HAS_ALPHA=alpha is not None,
        HAS_RESIDUAL=residual is not None, IEEE=x.dtype == torch.float32 and not fp8, SLOPE=LEAKY_SLOPE,
        GAIN=LEAKY_GAIN, FP8=fp8, FP8_MAX=E4M3_MAX)
    return out
