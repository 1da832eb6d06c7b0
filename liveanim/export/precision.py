"""What runs in half precision inside an fp16 export or engine, and what stays in fp32.

One policy for the ONNX fp16 export (explicit casts in the graph) and for TensorRT (layer
precision constraints, matched by the module path that every exported node name starts with):

- only the renderer runs in fp16. Both encoders stay fp32: measured on the CPU with ONNX Runtime
  (golden width-0.5 model and inputs), an fp16 motion encoder errs by 6e-4 on average in alpha,
  about 5% of the driving motion itself (a_d - a_0, 1.4e-2 on average): visible jitter. The
  source encoder runs once per avatar, so its precision costs nothing per frame.
- inside the renderer, the flow heads (`ToFlow`: flow, mask, grid sampling of the fp32 source
  features, and the flow accumulated across scales) stay fp32, as peers do; they are a 1x1 conv
  to 3 channels per scale, so this costs little. Their styles stay fp32 too: the decoder computes
  every layer's style from the fp16 latent before the stages run (`Decoder.styles`), outside the
  flow heads' own forward, so the style layer casts the latent itself.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from liveanim.contract import RENDERER
from liveanim.model import LIAX
from liveanim.model.decoder import ToFlow

HALF_GRAPHS = frozenset({RENDERER})
FP32_MODULE_PREFIXES = ("dec.flow",)  # the decoder's ToFlow heads: dec.flow_512, dec.flow2, ...


def keeps_fp32(module_path: str) -> bool:
    """Whether a module (or an exported node named after it) must compute in fp32."""
    return module_path.startswith(FP32_MODULE_PREFIXES)


def _inputs_to_fp32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _flow_outputs_to_half(module: nn.Module, args: tuple, outputs: tuple) -> tuple:
    """(warped, blended h, raw flow): the first two feed fp16 convs; the raw flow only feeds the
    next flow head, so it stays fp32 across scales."""
    warped, blended, flow = outputs
    return warped.half(), blended.half(), flow


def half_model(model: LIAX) -> LIAX:
    """A copy of `model` in fp16 whose flow heads compute in fp32 (the original is not touched).

    `model` must not be folded for inference: folded styles are computed together, in one dtype.
    """
    assert model.dec.bank is None, "half_model takes an unfolded model (export it before an engine folds it)"
    model = copy.deepcopy(model).half()
    for path, module in model.named_modules():
        if isinstance(module, ToFlow):
            assert keeps_fp32(path), f"{path} is a flow head outside {FP32_MODULE_PREFIXES}"
            module.float()
            module.register_forward_pre_hook(_inputs_to_fp32)
            module.conv.modulation.register_forward_pre_hook(_inputs_to_fp32)
            module.register_forward_hook(_flow_outputs_to_half)
    return model
