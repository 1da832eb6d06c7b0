"""Building blocks of LIA-X in plain PyTorch (no compiled extension).

Names of modules and parameters follow the official checkpoint exactly, so that `lia-x.pt`
loads with `strict=True`. Two forms differ from the official code and are exactly
equivalent in real arithmetic (see docs/performance.md):

- blur and upsampling (`upfirdn2d` with the 4x4 kernel outer([1,3,3,1])/64) run in one of two
  forms, chosen per model with `set_filter_impl`: 'conv', depthwise (transposed) convolutions,
  the reference and the form that exports; 'stencil', separable shifted slices (upsampling
  in its polyphase form) that torch.compile fuses into single kernels, where depthwise convs
  hit slow generic cuDNN kernels and layout conversions (measured: docs/performance.md);
- the modulated convolution keeps its weight constant and moves the style to the
  activations: `conv(x * s, W) * d`, with `d = rsqrt(sum_{i,k} W^2 s_i^2 + 1e-8)`.
Both export to ONNX/TensorRT with no custom operator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)


def blur_kernel(gain: float = 1.0) -> torch.Tensor:
    """The 4x4 low-pass kernel outer([1,3,3,1])/64, times `gain` (4 after 2x upsampling)."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(k, k) / 64.0 * gain


FILTER_IMPLS = ("conv", "stencil")


def _depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    """The (channels, 1, 4, 4) depthwise weight for `kernel`, in `like`'s dtype."""
    return kernel.to(like.dtype).expand(channels, 1, *kernel.shape)


def _taps(kernel: torch.Tensor) -> torch.Tensor:
    """The 1-D factor u of a separable kernel K = outer(u, u) (u = K[0] / sqrt(K[0, 0]))."""
    return kernel[0] / kernel[0, 0].sqrt()


def _filter_axis(x: torch.Tensor, taps: torch.Tensor, dim: int, pad: int) -> torch.Tensor:
    """Correlate `x` along `dim` with 4 taps after `pad` zeros on both sides (a stencil of
    shifted slices: exported as plain ops and fused by compilers, unlike depthwise convs)."""
    padding = [0, 0, 0, 0]
    padding[0 if dim == -1 else 2] = padding[1 if dim == -1 else 3] = pad
    x = F.pad(x, padding)
    size = x.shape[dim] - len(taps) + 1
    return sum(x.narrow(dim, t, size) * taps[t] for t in range(len(taps)))


def _upsample_axis(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """2x upsampling along `dim` by the polyphase form of upfirdn (up=2, pad=(2, 1)):
    even outputs u0*x[i-1] + u2*x[i], odd outputs u1*x[i] + u3*x[i+1], zeros outside."""
    padding = [0, 0, 0, 0]
    padding[0 if dim == -1 else 2] = padding[1 if dim == -1 else 3] = 1
    x = F.pad(x, padding)
    n = x.shape[dim] - 2
    even = x.narrow(dim, 0, n) * taps[0] + x.narrow(dim, 1, n) * taps[2]
    odd = x.narrow(dim, 1, n) * taps[1] + x.narrow(dim, 2, n) * taps[3]
    stacked = torch.stack((even, odd), dim=dim)  # (..., n, 2) along dim -> interleave
    shape = list(even.shape)
    shape[dim] = 2 * n
    return stacked.reshape(shape)


class Blur(nn.Module):
    """Low-pass filter with symmetric zero padding (upfirdn2d with up=down=1)."""

    def __init__(self, pad: int, gain: float = 1.0):
        """
        pad:  zeros added on every side before filtering.
        gain: kernel gain, 4 where the blur follows a 2x upsampling.
        """
        super().__init__()
        self.pad = pad
        self.impl = "conv"
        self.register_buffer("kernel", blur_kernel(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "stencil":
            taps = _taps(self.kernel).to(x.dtype)
            return _filter_axis(_filter_axis(x, taps, -2, self.pad), taps, -1, self.pad)
        channels = x.shape[1]
        return F.conv2d(x, _depthwise(self.kernel, channels, x), padding=self.pad, groups=channels)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, impl={self.impl}"


class Upsample(nn.Module):
    """2x upsampling with the blur kernel (upfirdn2d up=2, pad=(2,1))."""

    def __init__(self):
        super().__init__()
        self.impl = "conv"
        self.register_buffer("kernel", blur_kernel(gain=4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "stencil":
            taps = _taps(self.kernel).to(x.dtype)
            return _upsample_axis(_upsample_axis(x, taps, -2), taps, -1)
        channels = x.shape[1]
        weight = _depthwise(self.kernel, channels, x)
        return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=channels)

    def extra_repr(self) -> str:
        return f"impl={self.impl}"


class FusedLeakyReLU(nn.Module):
    """Bias, leaky ReLU (slope 0.2) and a gain of sqrt(2), as in StyleGAN2."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.view(1, -1, *([1] * (x.ndim - 2)))
        return F.leaky_relu(x + bias, LEAKY_SLOPE) * LEAKY_GAIN


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate: the weight is scaled by 1/sqrt(fan_in)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, bias: bool = True):
        """
        in_channels / out_channels: feature widths.
        kernel_size: square kernel side.
        stride, padding: as in `F.conv2d`.
        bias: whether the layer owns a bias (False where an activation adds it).
        """
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        out_c, in_c, k, _ = self.weight.shape
        return f"{in_c}, {out_c}, {k}, stride={self.stride}, padding={self.padding}"


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weight scaled by 1/sqrt(in_features))."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}"


class ConvLayer(nn.Sequential):
    """[blur or upsample] -> equalized conv -> [bias + leaky ReLU]; indices match the checkpoint."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 downsample: bool = False, upsample: bool = False,
                 bias: bool = True, activate: bool = True):
        """
        downsample: blur, then a stride-2 conv without padding (the encoder).
        upsample:   blurred 2x upsampling, then a same-size conv (the decoder's skip paths).
        bias:       whether a bias exists (owned by the activation when `activate`).
        activate:   add the fused bias + leaky ReLU.
        """
        layers: list[nn.Module] = []
        stride, padding = 1, kernel_size // 2
        if downsample:
            layers.append(Blur(pad=(4 - 2 + kernel_size - 1) // 2))
            stride, padding = 2, 0
        elif upsample:
            layers.append(Upsample())
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride, padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution in its constant-weight form.

    The official code folds the per-sample style into per-sample weights and runs a grouped
    conv; here the style scales the input channels and the demodulation scales the output
    channels, so the conv weight stays a constant (what TensorRT and cuDNN want).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        """
        in_channels / out_channels: feature widths.
        kernel_size: square kernel side (1 or 3).
        style_dim:   length of the latent code that modulates this layer.
        demodulate:  normalize each output channel to unit expected variance.
        upsample:    2x transposed conv followed by a blur.
        """
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        if upsample:
            self.blur = Blur(pad=1, gain=4.0)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x: (B, in, H, W); style: (B, style_dim) -> (B, out, H', W')."""
        weight = self.weight[0] * self.scale
        s = self.modulation(style)
        x = x * s[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        else:
            out = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            energy = weight.square().sum(dim=(2, 3))  # (out, in)
            d = torch.rsqrt(s.square() @ energy.t() + 1e-8)  # (B, out)
            out = out * d[:, :, None, None]
        return self.blur(out) if self.upsample else out

    def extra_repr(self) -> str:
        _, out_c, in_c, k, _ = self.weight.shape
        return f"{in_c}, {out_c}, {k}, demodulate={self.demodulate}, upsample={self.upsample}"


class StyledConv(nn.Module):
    """Modulated conv followed by the fused bias + leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, upsample=upsample)
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.activate(self.conv(x, style))


class ConstantInput(nn.Module):
    """The decoder's learned 4x4 starting tensor, repeated over the batch."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or one per channel for the narrow test models."""
    return nn.GroupNorm(min(32, channels), channels)


def set_filter_impl(module: nn.Module, impl: str) -> None:
    """Run every blur and upsampling inside `module` as 'conv' (reference) or 'stencil'."""
    assert impl in FILTER_IMPLS, impl
    for layer in module.modules():
        if isinstance(layer, (Blur, Upsample)):
            layer.impl = impl
