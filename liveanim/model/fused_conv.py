"""The fused 3x3 convolution as one PyTorch operator, and what a residual block adds to a conv.

`conv3x3_fused` runs the Triton kernel of `liveanim.model.triton_conv` (imported on the first
call, so that machines without Triton never import it) as the operator
`liveanim::conv3x3_fused`: torch.compile keeps it whole in its graphs, and CUDA graphs capture
it like any kernel. The layers call it where `KernelForms.triton_min_side` says; their own
forms, and `conv3x3_reference` (the same sums unfused), are the references it is tested against.
With an `Fp8Conv` (liveanim.model.fp8) its operands are e4m3.
"""

import importlib.util
import math
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from liveanim.model.fp8 import ActivationRange, Fp8Conv, RoundedOperands, conv3x3_fp8_reference

LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)
FUSED_IMPLS = ("triton", "reference")
Operands = Union[Fp8Conv, RoundedOperands, ActivationRange, None]


class Residual(NamedTuple):
    """What a residual block makes of a conv's activated output `out`: (gain * out + skip) / divisor.

    skip:    the block's input (or first conv's output), added after the gain.
    gain:    per-channel gain (1, C, 1, 1) of the conv's branch (FlowResBlock's gamma), or None.
    divisor: the block's normalization of the sum (sqrt(2) in ResBlock), 1 for none.
    """

    skip: torch.Tensor
    gain: Optional[torch.Tensor] = None
    divisor: float = 1.0

    def add_to(self, out: torch.Tensor) -> torch.Tensor:
        """The reference form: the same operations, in the same order, as the blocks ran before."""
        out = (out if self.gain is None else self.gain * out) + self.skip
        return out if self.divisor == 1.0 else out / self.divisor

    def folded_gain(self) -> float:
        """The positive factor that the conv before it can carry for `add_to_scaled_` (the
        divisor, where no per-channel gain, which may be negative, comes first)."""
        return 1.0 / self.divisor if self.gain is None else 1.0

    def add_to_scaled_(self, out: torch.Tensor) -> torch.Tensor:
        """add_to(out / folded_gain()), overwriting `out`: one pass where the divisor was folded."""
        if self.gain is None:
            return out.add_(self.skip, alpha=1.0 / self.divisor)
        out = torch.addcmul(self.skip, self.gain, out)
        return out if self.divisor == 1.0 else out.div_(self.divisor)


def triton_available() -> bool:
    """Whether Triton is installed (it is not on Windows or macOS), without importing it."""
    return importlib.util.find_spec("triton") is not None


@torch.library.custom_op("liveanim::conv3x3_fused", mutates_args=())
def _conv3x3_op(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                demod: Optional[torch.Tensor], bias: Optional[torch.Tensor], alpha: Optional[torch.Tensor],
                residual: Optional[torch.Tensor], beta: float, activate: bool,
                out_factor: Optional[torch.Tensor] = None) -> torch.Tensor:
    from liveanim.model import triton_conv

    return triton_conv.conv3x3(x, weight, scale, shift, demod, bias, alpha, residual, beta, activate, out_factor)


@_conv3x3_op.register_fake
def _conv3x3_shape(x: torch.Tensor, weight: torch.Tensor, *_: object) -> torch.Tensor:
    shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last)


def conv3x3_fused(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                  shift: torch.Tensor | None = None, demod: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, activate: bool = True,
                  residual: Residual | None = None, operands: Operands = None, impl: str = "triton") -> torch.Tensor:
    """conv3x3(x * scale + shift, weight, padding 1) * demod + bias, leaky ReLU times its gain,
    then the residual, in one kernel; channels-last out, in x's dtype (float32 accumulation).

    x:        (B, in, H, W) in any layout (channels-last is the fast one).
    weight:   (out, in, 3, 3), equalized-lr scale already applied; channels-last is read in place.
    scale:    (B, in) per-input-channel factors (the style; times a GroupNorm's where one is folded).
    shift:    (B, in) added after `scale` (a folded GroupNorm's offset); only with `scale`.
    demod:    (B, out) per-output-channel factors (the demodulation).
    bias:     (out,) added before the activation.
    activate: leaky ReLU (slope 0.2) times sqrt(2), as `FusedLeakyReLU`.
    residual: the block's sum around this conv (`Residual`).
    operands: None (x's dtype), an `Fp8Conv` (e4m3 operands, its weight instead of `weight`), or, in
              the reference implementation only, `RoundedOperands` or an `ActivationRange` to widen.
    impl:     'triton' (the kernel) or 'reference' (`conv3x3_reference`, plain PyTorch).
    """
    assert x.ndim == 4 and weight.shape[1:] == (x.shape[1], 3, 3), (x.shape, weight.shape)
    assert shift is None or scale is not None, "a shift comes with its scale"
    assert impl in FUSED_IMPLS, impl
    if impl == "reference":
        return conv3x3_reference(x, weight, scale, shift, demod, bias, activate, residual, operands)
    assert operands is None or isinstance(operands, Fp8Conv), "only the reference form emulates or measures"
    out_factor = None
    if operands is not None:
        assert operands.rows.shape == (weight.shape[0], 9 * x.shape[1]), "an Fp8Conv of another conv"
        scale, shift = operands.input_factors(scale, shift, x.shape[0])
        weight, out_factor = operands.rows, operands.output_factor()
    skip, gain, divisor = residual if residual is not None else (None, None, 1.0)
    gain = gain.reshape(-1) if gain is not None else None
    return torch.ops.liveanim.conv3x3_fused(x, weight, scale, shift, demod, bias, gain, skip,
                                            1.0 / divisor, activate, out_factor)


def conv3x3_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                      shift: torch.Tensor | None = None, demod: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, activate: bool = True, residual: Residual | None = None,
                      operands: Operands = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The fused conv's sums unfused (PyTorch's conv and elementwise ops), in `dtype` (float32 or
    wider by default), returned in x's dtype: what the kernel is checked against. The arguments
    are `conv3x3_fused`'s; `operands` rounds the conv's operands as the kernel would (`Fp8Conv`,
    `RoundedOperands`) or measures its input (`ActivationRange`)."""
    compute = dtype or torch.promote_types(x.dtype, torch.float32)

    def vector(values: torch.Tensor) -> torch.Tensor:
        return values.to(compute)[:, :, None, None]

    if isinstance(operands, Fp8Conv):
        out = conv3x3_fp8_reference(x, scale, shift, operands).to(compute)
    else:
        inputs = x.to(compute)
        if scale is not None:
            inputs = inputs * vector(scale) + (vector(shift) if shift is not None else 0)
        if isinstance(operands, ActivationRange):
            operands.observe(inputs)
        if isinstance(operands, RoundedOperands):
            inputs, weight = (t.to(operands.dtype).to(compute) for t in (inputs, weight))
        out = F.conv2d(inputs, weight.to(compute), padding=1)
    if demod is not None:
        out = out * vector(demod)
    if bias is not None:
        out = out + bias.to(compute)[:, None, None]
    if activate:
        out = F.leaky_relu(out, LEAKY_SLOPE) * LEAKY_GAIN
    if residual is not None:
        gain = None if residual.gain is None else residual.gain.to(compute)
        out = Residual(residual.skip.to(compute), gain, residual.divisor).add_to(out)
    return out.to(x.dtype)

