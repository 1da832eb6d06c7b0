"""The inference form of a loaded model: constant weight arithmetic done once, styles batched.

Both change how the model computes, not what: the module computes the same function afterwards,
but its state dict is no longer the checkpoint's (measured: docs/performance.md).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liveanim.model.decoder import Decoder
from liveanim.model.layers import (REFERENCE_FORMS, EqualConv2d, EqualLinear, KernelForms, Modulation,
                                   ModulatedConv2d, Styles, demodulation, phase_kernels, set_kernel_forms)


@torch.no_grad()
def fold_for_inference(module: nn.Module, forms: KernelForms = REFERENCE_FORMS, channels_last: bool = False) -> None:
    """Bake the constant weight arithmetic into the weights and batch the styles, in place, for
    running in `forms` (which it sets).

    The equalized-lr scales and the demodulation energies (sum_k W^2 of each modulated conv)
    are otherwise recomputed from every weight on every frame: 1.3 ms of a 18.5 ms fp16 render
    on an H100, which freezing in torch.compile did not remove. Every decoder then computes its
    styles in a `ModulationBank`, and keeps the phase kernels of the upsampling convs that
    `forms.phase_min_side` runs in phases (only those: they are 4x their weight).
    channels_last stores the conv weights NHWC, as cuDNN's fast kernels and the patch-matrix
    form read them. Fold a model after moving it to its device and dtype: moving it later copies
    the bank's shared weights apart (same results, more memory).
    """
    for layer in module.modules():
        if isinstance(layer, (EqualConv2d, EqualLinear, ModulatedConv2d)) and layer.scale != 1.0:
            layer.weight.mul_(layer.scale)
            layer.scale = 1.0
        if isinstance(layer, ModulatedConv2d) and layer.demodulate:
            weight = layer.weight[0].to(torch.promote_types(layer.weight.dtype, torch.float32))
            layer.energy = weight.square().sum(dim=(2, 3)).to(layer.weight.dtype)
        if channels_last and isinstance(layer, EqualConv2d):
            layer.weight.data = layer.weight.contiguous(memory_format=torch.channels_last)
        if channels_last and isinstance(layer, ModulatedConv2d):
            layer.weight.data = layer.weight[0].contiguous(memory_format=torch.channels_last).unsqueeze(0)
    for decoder in [layer for layer in module.modules() if isinstance(layer, Decoder)]:
        if decoder.bank is None:
            decoder.bank = ModulationBank(decoder.modulated_convs())
        for side, skip_up in decoder.upsampling_convs():
            in_phases = 0 < forms.phase_min_side <= side
            skip_up.phase_weight = phase_kernels(skip_up[1].weight) if in_phases else None
    set_kernel_forms(module, forms)


class ModulationBank(nn.Module):
    """The modulations of many folded modulated convs by one latent, in a few kernels.

    Every style is an affine map of the same latent, so all of them are one matrix product with
    the layers' weights stacked, and the demodulations of layers whose energies have one shape
    are one batched product. Layer by layer the released decoder ran 135 small kernels per frame
    for them (0.76 ms of a 15 ms fp16 render on an H100); batched, 0.17 ms. The layers' own
    style weights and energies become views of the stacked ones: no memory is added.
    """

    def __init__(self, convs: Sequence[ModulatedConv2d]):
        super().__init__()
        if any(conv.modulation.scale != 1.0 or (conv.demodulate and conv.energy is None) for conv in convs):
            raise ValueError("fold the layers' scales and energies before batching their styles")
        self.convs = list(convs)  # a plain list: the layers stay registered where they are
        self.register_buffer("weight", torch.cat([conv.modulation.weight for conv in convs]), persistent=False)
        self.register_buffer("bias", torch.cat([conv.modulation.bias for conv in convs]), persistent=False)
        self.spans: list[tuple[int, int]] = []
        for conv in convs:
            start = self.spans[-1][1] if self.spans else 0
            stop = start + conv.modulation.weight.shape[0]
            conv.modulation.weight.data = self.weight[start:stop]
            conv.modulation.bias.data = self.bias[start:stop]
            self.spans.append((start, stop))
        self.groups: list[list[int]] = []  # indices of the demodulating convs, by energy shape
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, conv in enumerate(convs):
            if conv.demodulate:
                by_shape.setdefault(tuple(conv.energy.shape), []).append(index)
        for members in by_shape.values():
            energies = torch.stack([convs[index].energy for index in members])
            self.register_buffer(f"energy{len(self.groups)}", energies, persistent=False)
            for position, index in enumerate(members):
                convs[index].energy = energies[position]
            self.groups.append(members)

    def forward(self, latent: torch.Tensor, first: int = 0, stop: int | None = None) -> Styles:
        """latent: (B, style_dim) -> the `Modulation` of the layers `first`..`stop`-1 (all by
        default), as `layer.modulate(latent)` gives it: a renderer compiled in parts computes each
        part's own, from the bank's rows of those layers (a view: no copy)."""
        stop = len(self.convs) if stop is None else stop
        rows = slice(self.spans[first][0], self.spans[stop - 1][1])
        stacked = F.linear(latent, self.weight[rows], self.bias[rows])
        scales = {index: stacked[:, start - rows.start:end - rows.start]
                  for index, (start, end) in enumerate(self.spans) if first <= index < stop}
        demods: dict[int, torch.Tensor] = {}
        for group, members in enumerate(self.groups):
            # a group's members are in layer order: those in range are consecutive energies
            positions = [position for position, index in enumerate(members) if first <= index < stop]
            if not positions:
                continue
            energies = getattr(self, f"energy{group}")[positions[0]:positions[-1] + 1]
            grouped = demodulation(torch.stack([scales[members[p]] for p in positions]), energies)
            demods.update((members[p], demod) for p, demod in zip(positions, grouped))
        return {self.convs[index]: Modulation(scale, demods.get(index)) for index, scale in scales.items()}

    def extra_repr(self) -> str:
        return f"{len(self.convs)} layers, {len(self.groups)} demodulation groups"
