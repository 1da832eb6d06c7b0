"""The PyTorch backend: eager fp32 (TF32 allowed on CUDA), fp16 or bf16 on GPUs."""

from __future__ import annotations

import torch

from engines.base import FEATURE_NAMES, Engine, EngineConfig, Tensors
from engines.devices import resolve_dtype
from engines.loading import load_model
from liveanim.model import LIAX


class TorchEngine(Engine):
    """Runs our `LIAX` module directly; the reference every other backend is checked against."""

    name = "torch"

    def __init__(self, config: EngineConfig, device: torch.device, model: LIAX | None = None):
        super().__init__(config, device)
        self.dtype = resolve_dtype(config.precision, device)
        model = model if model is not None else load_model(config)
        self.model = model.to(device=device, dtype=self.dtype)
        self._directions = self.model.directions().float()

    @property
    def directions(self) -> torch.Tensor:
        return self._directions

    @torch.inference_mode()
    def encode_source(self, inputs: Tensors) -> Tensors:
        state = self.model.encode_source(inputs["image"].to(self.device, self.dtype))
        out = {"z": state.z, "alpha": state.alpha, **dict(zip(FEATURE_NAMES, state.feats))}
        return {name: t.float() for name, t in out.items()}

    @torch.inference_mode()
    def encode_motion(self, inputs: Tensors) -> Tensors:
        return {"alpha": self.model.encode_motion(inputs["image"].to(self.device, self.dtype)).float()}

    @torch.inference_mode()
    def render(self, inputs: Tensors) -> Tensors:
        feats = tuple(inputs[name].to(self.device, self.dtype) for name in FEATURE_NAMES)
        image = self.model.decode(inputs["z_target"].to(self.device, self.dtype), feats)
        return {"image": image.float()}

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

