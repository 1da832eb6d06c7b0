"""The fused 3x3 convolution as one PyTorch operator, and what a residual block adds to a conv.

`conv3x3_fused` runs the Triton kernel of `liveanim.model.triton_conv` (imported on the first
call, so that machines without Triton never import it) as the operator
`liveanim::conv3x3_fused`: torch.compile keeps it whole in its graphs, and CUDA graphs capture
it like any kernel. The layers call it where `KernelForms.triton_min_side` says; their own
forms stay the reference it is tested against.
"""

import importlib.util
from typing import NamedTuple, Optional

import torch


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


def triton_available() -> bool:
    """Whether Triton is installed (it is not on Windows or macOS), without importing it."""
    return importlib.util.find_spec("triton") is not None


@torch.library.custom_op("liveanim::conv3x3_fused", mutates_args=())
def _conv3x3_op(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                demod: Optional[torch.Tensor], bias: Optional[torch.Tensor], alpha: Optional[torch.Tensor],
                residual: Optional[torch.Tensor], beta: float, activate: bool) -> torch.Tensor:
    from liveanim.model import triton_conv

    return triton_conv.conv3x3(x, weight, scale, shift, demod, bias, alpha, residual, beta, activate)


@_conv3x3_op.register_fake
def _conv3x3_shape(x: torch.Tensor, weight: torch.Tensor, *_: object) -> torch.Tensor:
    shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last)


def conv3x3_fused(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                  shift: torch.Tensor | None = None, demod: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, activate: bool = True,
                  residual: Residual | None = None) -> torch.Tensor:
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
    """
    assert x.ndim == 4 and weight.shape[1:] == (x.shape[1], 3, 3), (x.shape, weight.shape)
    assert shift is None or scale is not None, "a shift comes with its scale"
    skip, gain, divisor = residual if residual is not None else (None, None, 1.0)
    gain = gain.reshape(-1) if gain is not None else None
    return torch.ops.liveanim.conv3x3_fused(x, weight, scale, shift, demod, bias, gain, skip,
                                            1.0 / divisor, activate)

