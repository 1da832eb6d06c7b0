"""Building blocks of LIA-X in plain PyTorch (no compiled extension).

Names of modules and parameters follow the official checkpoint exactly, so that `lia-x.pt`
loads with `strict=True`. Two forms differ from the official code and are exactly
equivalent in real arithmetic (see docs/performance.md):

- the modulated convolution keeps its weight constant and moves the style to the
  activations: `conv(x * s, W) * d`, with `d = rsqrt(sum_{i,k} W^2 s_i^2 + 1e-8)`;
- blur, upsampling and convolution run in the forms that `KernelForms` picks per model
  (`set_kernel_forms`); the defaults are the reference forms, which export to ONNX/TensorRT
  with no custom operator. The fast forms exist for the GPU (measured: docs/performance.md).
`liveanim.model.folding` turns a loaded model into its inference form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from liveanim.model.fused_conv import FUSED_IMPLS, LEAKY_GAIN, LEAKY_SLOPE, Operands, Residual, conv3x3_fused


def random_normal(*shape: int) -> torch.Tensor:
    """N(0, 1) initial values, as the official code starts from; on the meta device (a model
    about to be loaded from a checkpoint) an empty tensor, since meta's random fill loads the
    compiler (seconds off every start)."""
    values = torch.empty(shape)
    return values if values.is_meta else values.normal_()


def blur_kernel(gain: float = 1.0) -> torch.Tensor:
    """The 4x4 low-pass kernel outer([1,3,3,1])/64, times `gain` (4 after 2x upsampling); made on
    the CPU even while a model is built on the meta device, like the constant it is."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device="cpu")
    return torch.outer(k, k) / 64.0 * gain


FILTER_FORMS = ("conv", "stencil")


@dataclass(frozen=True)
class KernelForms:
    """How the layers of a model compute; every form is exact in real arithmetic.

    filters:       blur and upsampling as 'conv', depthwise (transposed) convolutions (the
                   reference, and the form that exports), or 'stencil': blur as a sum of
                   shifted slices, upsampling as bilinear interpolation, which torch.compile
                   fuses into one kernel each, where cuDNN's depthwise kernels are slow.
    gemm_max_side: stride-1 convolutions on maps of at most this side (8x8 .. 32x32 in the
                   decoder) run as one matrix product over their patches: cuDNN's implicit
                   GEMM starts too few thread blocks there to keep a large GPU busy. 0: never.
    pointwise_max_in: 1x1 convolutions with at most this many input channels (the encoder's
                   RGB input) run as a sum of products, which a compiler fuses with the
                   activation into one pass: a tensor-core conv leaves most of its input
                   lanes idle there and writes its output for a second pass. 0: never.
    phase_min_side: a 2x upsampling followed by a 3x3 conv whose output has at least this side
                   runs as one conv at the input's resolution with the four output phases'
                   kernels stacked, then interleaved: the upsampled map (the largest of its
                   stage) is never written. Same multiply-adds. 0: never.
    triton_min_side: size-preserving 3x3 convs on maps of at least this side (with their
                   modulation, GroupNorm, bias, activation and residual, where the layer has
                   them) run as one Triton kernel (`fused_conv`), which writes each output map
                   once; needs Triton (CUDA, or its CPU interpreter). 0: never.
    fused_impl:    how those convs run: 'triton' (the kernel) or 'reference' (the same sums
                   unfused, in float32: for tests, and FP8's reference form where no GPU is).
    eager_forms:   uncompiled calls take forms made for kernels that run one by one: the blur
                   after a transposed conv as three 2x2 box averages (4 passes over the map,
                   where the stencil's 16 shifted slices take 31), upsampling as bilinear
                   interpolation, and with a batch of 1, where the conv's weight is smaller than
                   its input map, the style, the demodulation and the activation's gain folded
                   into the weight, with the conv's output finished in place: about 2 passes
                   over each map around its conv instead of 5-6. Compiled and exported graphs
                   keep the other forms, which the compiler fuses into one pass each.
    """

    filters: str = "conv"
    gemm_max_side: int = 0
    pointwise_max_in: int = 0
    phase_min_side: int = 0
    triton_min_side: int = 0
    fused_impl: str = "triton"
    eager_forms: bool = False

    def __post_init__(self) -> None:
        sizes = (self.gemm_max_side, self.pointwise_max_in, self.phase_min_side, self.triton_min_side)
        if self.filters not in FILTER_FORMS or self.fused_impl not in FUSED_IMPLS or min(sizes) < 0:
            raise ValueError(f"bad kernel forms {self}")


REFERENCE_FORMS = KernelForms()


def _depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    """The (channels, 1, 4, 4) depthwise weight for `kernel`, in `like`'s dtype."""
    return kernel.to(like.dtype).expand(channels, 1, *kernel.shape)


def _taps(kernel: torch.Tensor) -> torch.Tensor:
    """The 1-D factor u of a separable kernel K = outer(u, u) (u = K[0] / sqrt(K[0, 0]))."""
    return kernel[0] / kernel[0, 0].sqrt()


def _filter_axis(x: torch.Tensor, taps: torch.Tensor, dim: int, pad: int) -> torch.Tensor:
    """Correlate `x` along `dim` with 4 taps after `pad` zeros on both sides (a stencil of
    shifted slices: exported as plain ops and fused by compilers, unlike depthwise convs)."""
    padding = [0, 0] * (x.ndim - dim % x.ndim)  # F.pad lists the last dimension first
    padding[-2:] = [pad, pad]
    x = F.pad(x, padding)
    size = x.shape[dim] - len(taps) + 1
    return sum(x.narrow(dim, t, size) * taps[t] for t in range(len(taps)))


def _correlate_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of `x` with the 2-D `kernel`, no padding: a sum of shifted slices,
    which a compiler fuses into one kernel that reads `x` (unlike a depthwise conv)."""
    kh, kw = kernel.shape
    height, width = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
    weights = kernel.to(x.dtype)
    return sum(x[..., dy:dy + height, dx:dx + width] * weights[dy, dx] for dy in range(kh) for dx in range(kw))


def _upsample_bilinear(x: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(up=2, kernel outer([1,3,3,1])/16, pad=(2,1)) as bilinear interpolation.

    Per axis that upsampling is even outputs 0.25 x[i-1] + 0.75 x[i], odd outputs 0.75 x[i] +
    0.25 x[i+1], zeros outside: exactly bilinear 2x interpolation (half-pixel centres), except
    at the first and last output row and column, where bilinear repeats the edge (weight 1)
    instead of reading a zero (weight 0.75). One interpolation, times that edge correction, is a
    single fused kernel when compiled, in either memory layout.
    """
    out = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return out * (_edge_weights(out.shape[-2], out)[:, None] * _edge_weights(out.shape[-1], out))


def _edge_weights(size: int, like: torch.Tensor) -> torch.Tensor:
    """(size,) ones with 0.75 at both ends."""
    index = torch.arange(size, device=like.device)
    edge = (index == 0) | (index == size - 1)
    return torch.where(edge, 0.75, 1.0).to(like.dtype)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _fused(forms: KernelForms, x: torch.Tensor, weight: torch.Tensor, padding: int) -> bool:
    """Whether `forms` runs this size-preserving 3x3 conv as the fused Triton kernel."""
    return 0 < forms.triton_min_side <= min(x.shape[-2:]) and weight.shape[-2:] == (3, 3) and padding == 1


def runs_eager(forms: KernelForms) -> bool:
    """Whether this call runs in `KernelForms.eager_forms`."""
    return forms.eager_forms and not torch.compiler.is_compiling()


def _folds(forms: KernelForms, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether this call folds its modulation and gain into `weight` (`KernelForms.eager_forms`):
    where the weight is the smaller of the two (from 128x128 up in the decoder; on the small maps
    of 1024 channels the weight's products took longer than the map's passes they saved)."""
    return x.shape[0] == 1 and weight.numel() <= x[0].numel() and runs_eager(forms)


def _box_blur(x: torch.Tensor, pad: int) -> torch.Tensor:
    """The blur outer([1,3,3,1])/64 after `pad` zeros on every side, as three 2x2 box averages
    ([1,3,3,1]/8 = [1,1]/2 three times over, per axis)."""
    x = F.pad(x, [pad] * 4)
    for _ in range(3):
        x = F.avg_pool2d(x, 2, stride=1)
    return x


def _scaled(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """The equalized-lr weight; once `fold_for_inference` has baked the scale in, no op runs."""
    return weight if scale == 1.0 else weight * scale


def conv2d(x: torch.Tensor, weight: torch.Tensor, forms: KernelForms, bias: torch.Tensor | None = None,
           stride: int = 1, padding: int = 0) -> torch.Tensor:
    """`F.conv2d`, or the same sums in the form `forms` picks for its shape: for size-preserving
    convs on maps of at most `forms.gemm_max_side` one matrix product, for 1x1 convs with at most
    `forms.pointwise_max_in` input channels a sum of products."""
    size_preserving = stride == 1 and weight.shape[-1] == 2 * padding + 1
    if size_preserving and weight.shape[-1] == 1 and weight.shape[1] <= forms.pointwise_max_in:
        return _conv1x1_as_products(x, weight, bias)
    if not size_preserving or max(x.shape[-2:]) > forms.gemm_max_side:
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)
    return _conv2d_as_gemm(x, weight, bias, padding)


def _conv1x1_as_products(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 conv as sum_i x_i * W[:, i] over the input channels, in float32 or wider, with a
    channels-last result (what the next conv reads)."""
    compute = torch.promote_types(x.dtype, torch.float32)
    pixels = x.permute(0, 2, 3, 1).to(compute)  # (B, H, W, in)
    columns = weight[:, :, 0, 0].t().to(compute)  # (in, out)
    out = sum(pixels[..., i:i + 1] * columns[i] for i in range(columns.shape[0]))
    if bias is not None:
        out = out + bias
    return out.to(x.dtype).permute(0, 3, 1, 2)


# Per axis, _PHASE_MIX[p][k][j]: the weight of input i - 1 + j in the upsampled value that tap k
# of a 3-tap conv reads at output 2i + p (upfirdn's 2x upsampling mixes neighbours 0.25 / 0.75).
_PHASE_MIX = (((0.75, 0.25, 0.0), (0.25, 0.75, 0.0), (0.0, 0.75, 0.25)),
              ((0.25, 0.75, 0.0), (0.0, 0.75, 0.25), (0.0, 0.25, 0.75)))


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernels (4 out, in, 3, 3) that compute a 3x3 conv's outputs at the four phases
    (row parity major, then column parity) of a 2x upsampled map from the map before upsampling;
    in the weight's dtype and memory layout."""
    compute = torch.promote_types(weight.dtype, torch.float32)
    mix = torch.tensor(_PHASE_MIX, dtype=compute, device=weight.device)
    kernels = torch.einsum("pkj,qlm,oikl->pqoijm", mix, mix, weight.to(compute))
    layout = torch.channels_last if _is_channels_last(weight) else torch.contiguous_format
    return kernels.reshape(-1, *weight.shape[1:]).to(weight.dtype).contiguous(memory_format=layout)


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
        self.gain = gain  # what the kernel sums to
        self.forms = REFERENCE_FORMS
        self.register_buffer("kernel", blur_kernel(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forms.filters == "stencil":  # separable: the input, often a fused activation,
            taps = _taps(self.kernel).to(x.dtype)  # is read 4 times per pass, not 16 (measured)
            return _filter_axis(_filter_axis(x, taps, -2, self.pad), taps, -1, self.pad)
        channels = x.shape[1]
        return F.conv2d(x, _depthwise(self.kernel, channels, x), padding=self.pad, groups=channels)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, filters={self.forms.filters}"


class Upsample(nn.Module):
    """2x upsampling with the blur kernel (upfirdn2d up=2, pad=(2,1)); the stencil form is
    bilinear interpolation, which this fixed kernel equals (`_upsample_bilinear`)."""

    def __init__(self):
        super().__init__()
        self.forms = REFERENCE_FORMS
        self.register_buffer("kernel", blur_kernel(gain=4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forms.filters == "stencil" or runs_eager(self.forms):
            return _upsample_bilinear(x)
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

    def after_folded_conv(self, conv: Callable[[float], torch.Tensor], residual: Residual | None) -> torch.Tensor:
        """forward(conv(1)), then the residual, where `conv(gain)` is the conv with `gain` in its
        weight (`KernelForms.eager_forms`): the leaky ReLU is positively homogeneous, so the weight
        carries the gain sqrt(2) (and the residual's divisor), and the rest runs in the conv's output."""
        gain = LEAKY_GAIN * (residual.folded_gain() if residual is not None else 1.0)
        x = conv(gain)
        bias = self.bias.view(1, -1, *([1] * (x.ndim - 2)))
        out = F.leaky_relu_(x.add_(bias, alpha=gain), LEAKY_SLOPE)
        return out if residual is None else residual.add_to_scaled_(out)


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
        self.weight = nn.Parameter(random_normal(out_channels, in_channels, kernel_size, kernel_size))
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
        self.weight = nn.Parameter(random_normal(out_features, in_features))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _scaled(self.weight, self.scale), self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}"


class ConvLayer(nn.Sequential):
    """[blur or upsample] -> equalized conv -> [bias + leaky ReLU]; indices match the checkpoint.

    An upsampling 3x3 layer given `phase_weight` (`phase_kernels` of its weight; folding gives
    them to the layers that `KernelForms.phase_min_side` picks) runs its conv at the input's
    resolution. `operands` applies where the conv runs fused (`conv3x3_fused`; `fp8.calibrate`
    sets it).
    """

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
        self.register_buffer("phase_weight", None, persistent=False)
        self.operands: Operands = None

    def conv_weight(self) -> torch.Tensor:
        """The weight the fused conv gets (equalized-lr scale applied)."""
        conv = next(layer for layer in self if isinstance(layer, EqualConv2d))
        return _scaled(conv.weight, conv.scale)

    def forward(self, x: torch.Tensor, residual: Residual | None = None) -> torch.Tensor:
        """residual: the block's sum around this layer (only for a layer that activates)."""
        conv = self[0]
        if len(self) == 2 and isinstance(self[1], FusedLeakyReLU) and _fused(conv.forms, x, conv.weight, conv.padding):
            return conv3x3_fused(x, self.conv_weight(), bias=self[1].bias, residual=residual, operands=self.operands,
                                 impl=conv.forms.fused_impl)
        layers = list(self)
        if self.phase_weight is not None:
            x = self._upsampled_conv_in_phases(x, self.phase_weight)
            layers = layers[2:]
        elif isinstance(layers[-1], FusedLeakyReLU) and _folds(conv.forms, x, layers[-2].weight):
            return self._folded(x, residual)
        for layer in layers:
            x = layer(x)
        return x if residual is None else residual.add_to(x)

    def _folded(self, x: torch.Tensor, residual: Residual | None) -> torch.Tensor:
        """forward in `KernelForms.eager_forms`'s form: the activation's gain (and the residual's
        divisor) in the conv's weight, the rest in place."""
        *resampling, conv, activation = self
        for layer in resampling:
            x = layer(x)
        return activation.after_folded_conv(
            lambda gain: conv2d(x, _scaled(conv.weight, conv.scale) * gain, conv.forms, None, conv.stride, conv.padding),
            residual)

    def _upsampled_conv_in_phases(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """conv(upsample(x)) as one conv of `x` with the four phases' kernels, interleaved.

        The zero padding of a conv after the upsampling is not a zero padding before it (the
        upsampling would spread the input into it), so the outermost output rows and columns come
        from the reference form, on strips two rows or columns wide of the upsampled map.
        """
        upsample, conv = self[0], self[1]
        batch, _, height, width = x.shape
        out_channels = weight.shape[0] // 4
        phases = conv2d(x, weight, conv.forms, padding=1)
        out = (phases.view(batch, 2, 2, out_channels, height, width).permute(0, 3, 4, 1, 5, 2)
               .reshape(batch, out_channels, 2 * height, 2 * width))
        if conv.bias is not None:
            out = out + conv.bias[:, None, None]
        rows = conv(torch.cat([upsample(x[:, :, :2])[:, :, :2], upsample(x[:, :, -2:])[:, :, -2:]]))
        cols = conv(torch.cat([upsample(x[..., :2])[..., :2], upsample(x[..., -2:])[..., -2:]]))
        row, col = (torch.arange(2 * n, device=x.device) for n in (height, width))
        out = torch.where(col == 0, cols[:batch, ..., :1],
                          torch.where(col == 2 * width - 1, cols[batch:, ..., -1:], out))
        return torch.where(row[:, None] == 0, rows[:batch, :, :1],
                           torch.where(row[:, None] == 2 * height - 1, rows[batch:, :, -1:], out))


class Modulation(NamedTuple):
    """What a latent sets in one modulated conv: input scales (B, in), the style, and output
    scales (B, out), the demodulation (None where the layer does not demodulate)."""

    scale: torch.Tensor
    demod: torch.Tensor | None


def demodulation(scale: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """rsqrt(sum_{i,k} W^2 s_i^2 + 1e-8) per output channel, from the energies sum_k W^2 (out, in);
    batched over leading dimensions: (..., B, in) scales with (..., out, in) energies."""
    return torch.rsqrt(scale.square() @ energy.transpose(-1, -2) + 1e-8)


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
        self.weight = nn.Parameter(random_normal(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        if upsample:
            self.blur = Blur(pad=1, gain=4.0)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.upsample = upsample
        self.forms = REFERENCE_FORMS
        self.register_buffer("energy", None, persistent=False)  # sum_k W^2, (out, in), once folded

    def modulate(self, latent: torch.Tensor) -> Modulation:
        """This layer's modulation by a latent (B, style_dim), on its own (`ModulationBank`
        computes those of many layers together)."""
        scale = self.modulation(latent)
        if not self.demodulate:
            return Modulation(scale, None)
        energy = self.energy if self.energy is not None else _scaled(self.weight[0], self.scale).square().sum(dim=(2, 3))
        return Modulation(scale, demodulation(scale, energy))

    def forward(self, x: torch.Tensor, modulation: Modulation) -> torch.Tensor:
        """x: (B, in, H, W); modulation: from `modulate` -> (B, out, H', W')."""
        weight = _scaled(self.weight[0], self.scale)
        x = x * modulation.scale[:, :, None, None]
        if self.upsample:
            out = self._upsampling_conv(x, weight)
        else:
            out = conv2d(x, weight, self.forms, padding=weight.shape[-1] // 2)
        if modulation.demod is not None:
            out = out * modulation.demod[:, :, None, None]
        return out

    def folded(self, x: torch.Tensor, modulation: Modulation, gain: float) -> torch.Tensor:
        """forward(x, modulation) * gain for a batch of 1, with the style, the demodulation and
        `gain` in the weight (`KernelForms.eager_forms`): the map is read once, by the conv."""
        out_scale = gain if modulation.demod is None else modulation.demod[0][:, None, None, None] * gain
        weight = _scaled(self.weight[0], self.scale) * modulation.scale[0][:, None, None] * out_scale
        if self.upsample:
            return self._upsampling_conv(x, weight)
        return conv2d(x, weight, self.forms, padding=weight.shape[-1] // 2)

    def _upsampling_conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """2x transposed conv, then the blur (pad 1).

        In the stencil form the transposed conv runs on `x` padded by one zero, which puts
        exactly the blur's padding (and one more row and column) around its output: the blur,
        one pass of 16 taps, then reads the conv's output directly, with no padded copy in
        between (with the demodulation and activation after it: one kernel when compiled).
        """
        weight = weight.transpose(0, 1)
        if runs_eager(self.forms):
            return _box_blur(F.conv_transpose2d(x, weight * self.blur.gain, stride=2), pad=1)
        if self.forms.filters != "stencil":
            return self.blur(F.conv_transpose2d(x, weight, stride=2))
        padded = F.conv_transpose2d(F.pad(x, [1] * 4), weight, stride=2)  # the output, 2 zeros around
        return _correlate_valid(padded[:, :, 1:-1, 1:-1], self.blur.kernel)

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
        self.operands: Operands = None  # where the conv runs fused (`fp8.calibrate` sets it)

    def conv_weight(self) -> torch.Tensor:
        """The weight the fused conv gets (equalized-lr scale applied)."""
        return _scaled(self.conv.weight[0], self.conv.scale)

    def forward(self, x: torch.Tensor, styles: Styles, residual: Residual | None = None,
                norm: GroupNorm | None = None) -> torch.Tensor:
        """residual: the block's sum around this layer; norm: normalizes x first (in the fused
        form as the kernel loads it: the normalized map is never written)."""
        conv, modulation = self.conv, styles[self.conv]
        if not conv.upsample and _fused(conv.forms, x, conv.weight[0], 1):
            scale, shift = modulation.scale, None
            if norm is not None:
                factor, offset = norm.channel_affine(x)
                scale, shift = scale * factor, scale * offset
            return conv3x3_fused(x, self.conv_weight(), scale, shift, modulation.demod, self.activate.bias,
                                 residual=residual, operands=self.operands, impl=conv.forms.fused_impl)
        if _folds(conv.forms, x, conv.weight):
            x = x if norm is None else norm.one_pass(x)
            return self.activate.after_folded_conv(lambda gain: conv.folded(x, modulation, gain), residual)
        out = self.activate(conv(x if norm is None else norm(x), modulation))
        return out if residual is None else residual.add_to(out)


FUSABLE = (ConvLayer, StyledConv)
"""The layers whose 3x3 conv can run fused (`conv3x3_fused`), with `operands` and `conv_weight`."""

Styles = Mapping[ModulatedConv2d, Modulation]
"""The modulations of a decoder's layers by one latent, looked up by layer."""


class ConstantInput(nn.Module):
    """The decoder's learned 4x4 starting tensor, repeated over the batch."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(random_normal(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that keeps a channels-last input channels-last.

    PyTorch's kernel wants NCHW and would copy the map there and back. Here the statistics are
    per-channel reductions over H*W of the NHWC view (contiguous reads), combined exactly into
    group statistics, in float32; the normalization is one pass over the map as it is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_channels_last(x):
            return super().forward(x)
        mean, rstd = self._channel_statistics(x)
        scale = rstd[:, :, None, None] * self.weight[:, None, None]
        return ((x.to(mean.dtype) - mean[:, :, None, None]) * scale + self.bias[:, None, None]).to(x.dtype)

    def channel_affine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor, offset), each (B, C) in float32 or wider, with norm(x) = factor * x + offset per
        channel: what a conv that reads x applies as it loads it."""
        return self._affine(*self._channel_statistics(x))

    def one_pass(self, x: torch.Tensor) -> torch.Tensor:
        """forward(x) for uncompiled calls (`KernelForms.eager_forms`), in any layout: statistics from
        sums that read x as it is (no float32 copy), then one pass over it."""
        compute = torch.promote_types(x.dtype, torch.float32)
        batch, channels, height, width = x.shape
        if _is_channels_last(x):  # rows of W * C values: a reduction over H has that many outputs to share
            rows = x.permute(0, 2, 3, 1).reshape(batch, height, width * channels)
            column_sums = rows.sum(dim=1, dtype=compute)
            column_energies = torch.linalg.vector_norm(rows, dim=1, dtype=compute).square()
            channel_sum, channel_energy = (t.view(batch, width, channels).sum(dim=1) for t in (column_sums, column_energies))
        else:
            channel_sum = x.sum(dim=(2, 3), dtype=compute)
            channel_energy = torch.linalg.vector_norm(x, dim=(2, 3), dtype=compute).square()
        channel_mean, channel_energy = channel_sum / (height * width), channel_energy / (height * width)
        factor, offset = self._affine(*self._group_statistics((channel_energy - channel_mean.square()).clamp_min(0.0),
                                                              channel_mean))
        return torch.addcmul(offset[:, :, None, None].to(x.dtype), x, factor[:, :, None, None].to(x.dtype))

    def _affine(self, mean: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor, offset) of `channel_affine` from the group statistics."""
        factor = rstd * self.weight
        return factor, self.bias - mean * factor

    def _channel_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each channel's group mean and 1/std, (B, C), in float32 or wider."""
        batch, channels, height, width = x.shape
        compute = torch.promote_types(x.dtype, torch.float32)
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels).to(compute)
        return self._group_statistics(*torch.var_mean(pixels, dim=1, correction=0))

    def _group_statistics(self, channel_var: torch.Tensor, channel_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each channel's group mean and 1/std, (B, C), from its own variance and mean (B, C)."""
        batch, channels = channel_mean.shape
        size = channels // self.num_groups
        channel_var, channel_mean = (t.view(batch, self.num_groups, size) for t in (channel_var, channel_mean))
        mean = channel_mean.mean(dim=2)  # (B, groups)
        var = (channel_var + (channel_mean - mean[:, :, None]).square()).mean(dim=2)

        def per_channel(stat: torch.Tensor) -> torch.Tensor:  # (B, groups) -> (B, C)
            return stat[:, :, None].expand(-1, -1, size).reshape(batch, channels)

        return per_channel(mean), per_channel(torch.rsqrt(var + self.eps))


def group_norm(channels: int) -> GroupNorm:
    """GroupNorm with 32 groups, or one per channel for the narrow test models."""
    return GroupNorm(min(32, channels), channels)


def set_kernel_forms(module: nn.Module, forms: KernelForms) -> None:
    """Run every blur, upsampling and convolution inside `module` in `forms`."""
    for layer in module.modules():
        if isinstance(layer, (Blur, Upsample, EqualConv2d, ModulatedConv2d)):
            layer.forms = forms
