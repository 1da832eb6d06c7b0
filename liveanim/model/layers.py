"""Building blocks of LIA-X in plain PyTorch (no compiled extension).

Names of modules and parameters follow the official checkpoint exactly, so that `lia-x.pt`
loads with `strict=True`. Two forms differ from the official code and are exactly
equivalent in real arithmetic (see docs/performance.md):

- the modulated convolution keeps its weight constant and moves the style to the
  activations: `conv(x * s, W) * d`, with `d = rsqrt(sum_{i,k} W^2 s_i^2 + 1e-8)`;
- blur, upsampling and convolution run in the forms that `KernelForms` picks per model
  (`set_kernel_forms`); the defaults are the reference forms, which export to ONNX/TensorRT
  with no custom operator. The fast forms exist for the GPU (measured: docs/performance.md).
`fold_for_inference` bakes the constant weight arithmetic into the weights once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)


def blur_kernel(gain: float = 1.0) -> torch.Tensor:
    """The 4x4 low-pass kernel outer([1,3,3,1])/64, times `gain` (4 after 2x upsampling)."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(k, k) / 64.0 * gain


FILTER_FORMS = ("conv", "stencil")


@dataclass(frozen=True)
class KernelForms:
    """How the layers of a model compute; every form is exact in real arithmetic.

    filters:       blur and upsampling as 'conv', depthwise (transposed) convolutions (the
                   reference, and the form that exports), or 'stencil', separable shifted
                   slices (upsampling in its polyphase form) that torch.compile fuses into one
                   kernel each, where cuDNN's depthwise kernels are slow.
    gemm_max_side: stride-1 convolutions on maps of at most this side (8x8 .. 32x32 in the
                   decoder) run as one matrix product over their patches: cuDNN's implicit
                   GEMM starts too few thread blocks there to keep a large GPU busy. 0: never.
    """

    filters: str = "conv"
    gemm_max_side: int = 0

    def __post_init__(self) -> None:
        if self.filters not in FILTER_FORMS or self.gemm_max_side < 0:
            raise ValueError(f"bad kernel forms {self}")


REFERENCE_FORMS = KernelForms()


def _depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    """The (channels, 1, 4, 4) depthwise weight for `kernel`, in `like`'s dtype."""
    return kernel.to(like.dtype).expand(channels, 1, *kernel.shape)


def _taps(kernel: torch.Tensor) -> torch.Tensor:
    """The 1-D factor u of a separable kernel K = outer(u, u) (u = K[0] / sqrt(K[0, 0]))."""
    return kernel[0] / kernel[0, 0].sqrt()


def _pad_axis(x: torch.Tensor, dim: int, pad: int) -> torch.Tensor:
    """`pad` zeros on both sides of `x` along `dim`."""
    padding = [0, 0] * (x.ndim - dim % x.ndim)  # F.pad lists the last dimension first
    padding[-2:] = [pad, pad]
    return F.pad(x, padding)


def _filter_axis(x: torch.Tensor, taps: torch.Tensor, dim: int, pad: int) -> torch.Tensor:
    """Correlate `x` along `dim` with 4 taps after `pad` zeros on both sides (a stencil of
    shifted slices: exported as plain ops and fused by compilers, unlike depthwise convs)."""
    x = _pad_axis(x, dim, pad)
    size = x.shape[dim] - len(taps) + 1
    return sum(x.narrow(dim, t, size) * taps[t] for t in range(len(taps)))


def _upsample_axis(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """2x upsampling along `dim` by the polyphase form of upfirdn (up=2, pad=(2, 1)):
    even outputs u0*x[i-1] + u2*x[i], odd outputs u1*x[i] + u3*x[i+1], zeros outside."""
    dim %= x.ndim
    x = _pad_axis(x, dim, 1)
    n = x.shape[dim] - 2
    even = x.narrow(dim, 0, n) * taps[0] + x.narrow(dim, 1, n) * taps[2]
    odd = x.narrow(dim, 1, n) * taps[1] + x.narrow(dim, 2, n) * taps[3]
    stacked = torch.stack((even, odd), dim=dim + 1)  # (..., n, 2, ...): interleaved by the reshape
    shape = list(even.shape)
    shape[dim] = 2 * n
    return stacked.reshape(shape)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _scaled(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """The equalized-lr weight; once `fold_for_inference` has baked the scale in, no op runs."""
    return weight if scale == 1.0 else weight * scale


def conv2d(x: torch.Tensor, weight: torch.Tensor, forms: KernelForms, bias: torch.Tensor | None = None,
           stride: int = 1, padding: int = 0) -> torch.Tensor:
    """`F.conv2d`, or for size-preserving convs on maps of at most `forms.gemm_max_side` the
    same sums as one matrix product."""
    size_preserving = stride == 1 and weight.shape[-1] == 2 * padding + 1
    if not size_preserving or max(x.shape[-2:]) > forms.gemm_max_side:
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)
    return _conv2d_as_gemm(x, weight, bias, padding)


def _conv2d_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """A stride-1, size-preserving conv as (B*H*W, k*k*C) patches @ (k*k*C, out) weights.

    Patches and weights are both ordered (ky, kx, C), so a channels-last weight is read as is and
    the patch gather fuses into whatever produced `x`; the result is channels-last too.
    """
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    padded = F.pad(x, [padding] * 4).permute(0, 2, 3, 1)  # (B, H + 2p, W + 2p, C)
    taps = [padded[:, dy:dy + height, dx:dx + width] for dy in range(kh) for dx in range(kw)]
    patches = torch.stack(taps, dim=3).reshape(batch * height * width, kh * kw * channels)
    out = F.linear(patches, weight.permute(0, 2, 3, 1).reshape(out_channels, -1), bias)
    return out.view(batch, height, width, out_channels).permute(0, 3, 1, 2)


class Blur(nn.Module):
    """Low-pass filter with symmetric zero padding (upfirdn2d with up=down=1)."""

    def __init__(self, pad: int, gain: float = 1.0):
        """
        pad:  zeros added on every side before filtering.
        gain: kernel gain, 4 where the blur follows a 2x upsampling.
        """
        super().__init__()
        self.pad = pad
        self.forms = REFERENCE_FORMS
        self.register_buffer("kernel", blur_kernel(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forms.filters == "stencil":
            taps = _taps(self.kernel).to(x.dtype)
            return _filter_axis(_filter_axis(x, taps, -2, self.pad), taps, -1, self.pad)
        channels = x.shape[1]
        return F.conv2d(x, _depthwise(self.kernel, channels, x), padding=self.pad, groups=channels)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, filters={self.forms.filters}"


class Upsample(nn.Module):
    """2x upsampling with the blur kernel (upfirdn2d up=2, pad=(2,1))."""

    def __init__(self):
        super().__init__()
        self.forms = REFERENCE_FORMS
        self.register_buffer("kernel", blur_kernel(gain=4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forms.filters == "stencil":
            taps = _taps(self.kernel).to(x.dtype)
            if _is_channels_last(x):  # interleave rows and columns of (B, H, W, C): the result
                # stays channels-last; in the compiled renderer this replaced a 0.6 ms kernel (the
                # NCHW interleave of a channels-last map at 512x512, H100), though in isolation
                # the NCHW form is faster: measure both before changing it
                nhwc = x.permute(0, 2, 3, 1)
                return _upsample_axis(_upsample_axis(nhwc, taps, 1), taps, 2).permute(0, 3, 1, 2)
            return _upsample_axis(_upsample_axis(x, taps, -2), taps, -1)
        channels = x.shape[1]
        weight = _depthwise(self.kernel, channels, x)
        return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=channels)

    def extra_repr(self) -> str:
        return f"filters={self.forms.filters}"


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
        self.forms = REFERENCE_FORMS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, _scaled(self.weight, self.scale), self.forms, self.bias, self.stride, self.padding)

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
        return F.linear(x, _scaled(self.weight, self.scale), self.bias)

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
        self.forms = REFERENCE_FORMS
        self.register_buffer("energy", None, persistent=False)  # sum_k W^2, (out, in), once folded

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x: (B, in, H, W); style: (B, style_dim) -> (B, out, H', W')."""
        weight = _scaled(self.weight[0], self.scale)
        s = self.modulation(style)
        x = x * s[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        else:
            out = conv2d(x, weight, self.forms, padding=weight.shape[-1] // 2)
        if self.demodulate:
            energy = self.energy if self.energy is not None else weight.square().sum(dim=(2, 3))
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


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that keeps a channels-last input channels-last.

    PyTorch's kernel wants NCHW and would copy the map there and back; here the statistics
    are a reduction over (H*W, channels of the group) of the NHWC view, in float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_channels_last(x):
            return super().forward(x)
        batch, channels, height, width = x.shape
        groups = x.permute(0, 2, 3, 1).reshape(batch, height * width, self.num_groups, channels // self.num_groups)
        var, mean = torch.var_mean(groups.float(), dim=(1, 3), keepdim=True, correction=0)
        normed = ((groups - mean) * torch.rsqrt(var + self.eps)).reshape(batch, height, width, channels)
        return (normed * self.weight + self.bias).to(x.dtype).permute(0, 3, 1, 2)


def group_norm(channels: int) -> GroupNorm:
    """GroupNorm with 32 groups, or one per channel for the narrow test models."""
    return GroupNorm(min(32, channels), channels)


def set_kernel_forms(module: nn.Module, forms: KernelForms) -> None:
    """Run every blur, upsampling and convolution inside `module` in `forms`."""
    for layer in module.modules():
        if isinstance(layer, (Blur, Upsample, EqualConv2d, ModulatedConv2d)):
            layer.forms = forms


@torch.no_grad()
def fold_for_inference(module: nn.Module, channels_last: bool = False) -> None:
    """Bake the constant weight arithmetic into the weights, once and in place.

    The equalized-lr scales and the demodulation energies (sum_k W^2 of each modulated conv)
    are otherwise recomputed from every weight on every frame: 1.3 ms of a 18.5 ms fp16 render
    on an H100, which freezing in torch.compile did not remove (docs/performance.md). The
    module computes the same function afterwards, but its state dict is no longer the
    checkpoint's. channels_last stores the conv weights NHWC, as cuDNN's fast kernels and the
    patch-matrix form read them.
    """
    for layer in module.modules():
        if isinstance(layer, (EqualConv2d, EqualLinear, ModulatedConv2d)) and layer.scale != 1.0:
            layer.weight.mul_(layer.scale)
            layer.scale = 1.0
        if isinstance(layer, ModulatedConv2d) and layer.demodulate:
            layer.energy = layer.weight[0].float().square().sum(dim=(2, 3)).to(layer.weight.dtype)
        if channels_last and isinstance(layer, EqualConv2d):
            layer.weight.data = layer.weight.contiguous(memory_format=torch.channels_last)
        if channels_last and isinstance(layer, ModulatedConv2d):
            layer.weight.data = layer.weight[0].contiguous(memory_format=torch.channels_last).unsqueeze(0)
