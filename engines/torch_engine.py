"""The PyTorch backend: eager fp32 (TF32 allowed on CUDA), fp16 or bf16 on GPUs.

Two opt-in speed-ups for the per-frame graphs (motion encoder and renderer), from EngineConfig:
- `compile`: torch.compile with frozen weights, compiled lazily on the first call of each shape;
  blur and upsampling switch to their stencil form, which Inductor fuses (docs/performance.md);
- `cuda_graphs`: each is captured once per input shape and replayed, which removes the launch
  overhead of its ~1500 kernels; inputs are copied into the captured buffers, outputs cloned.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from engines.base import FEATURE_NAMES, Engine, EngineConfig, Tensors
from engines.devices import resolve_dtype
from engines.loading import load_model
from export.contract import shared_source
from liveanim.errors import BackendUnavailable, EngineError
from liveanim.model import LIAX
from liveanim.model.layers import set_filter_impl

log = logging.getLogger(__name__)

GraphFn = Callable[..., torch.Tensor]
WARMUP_RUNS = 2  # before a capture: lets cuDNN pick its algorithms and compile run


MEMORY_ADVICE = "Close other programs that use the GPU, or use --precision fp16 (half the memory)."


def gpu_memory_status(device: torch.device) -> str:
    """'3.2 of 79.1 GiB free' for a CUDA device."""
    free, total = torch.cuda.mem_get_info(device)
    return f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free"


def out_of_memory(device: torch.device, doing: str) -> EngineError:
    """The error for a GPU that ran out of memory, with how much it has and what helps."""
    return EngineError(f"the GPU ran out of memory {doing} ({gpu_memory_status(device)}). {MEMORY_ADVICE}")


class TorchEngine(Engine):
    """Runs our `LIAX` module directly; the reference every other backend is checked against."""

    name = "torch"

    def __init__(self, config: EngineConfig, device: torch.device, model: LIAX | None = None):
        """model: an already loaded model, moved to `device` and the precision's dtype (not copied)."""
        super().__init__(config, device)
        self.dtype = resolve_dtype(config.precision, device)
        self.graphs = config.cuda_graphs if config.cuda_graphs is not None else device.type == "cuda"
        if self.graphs and device.type != "cuda":
            raise BackendUnavailable(f"CUDA graphs need an NVIDIA GPU, not {device}; leave them off.")
        model = model if model is not None else load_model(config)
        try:
            self.model = model.to(device=device, dtype=self.dtype)
        except torch.cuda.OutOfMemoryError:
            raise out_of_memory(device, "loading the model") from None
        self._directions = self.model.directions().float()
        if config.compile:
            set_filter_impl(self.model, "stencil")
        self._motion = self._accelerated(self.model.encode_motion)
        self._decode = self._accelerated(lambda z, *feats: self.model.decode(z, feats))

    def _accelerated(self, fn: GraphFn) -> GraphFn:
        if self.config.compile:
            fn = torch.compile(fn, dynamic=False, options={"freezing": True})
        if self.graphs:
            fn = GraphReplay(fn, self.device)
        return fn

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
        return {"alpha": self._motion(inputs["image"].to(self.device, self.dtype)).float()}

    @torch.inference_mode()
    def render(self, inputs: Tensors) -> Tensors:
        feats = (shared_source(inputs[name]).to(self.device, self.dtype) for name in FEATURE_NAMES)
        image = self._decode(inputs["z_target"].to(self.device, self.dtype), *feats)
        return {"image": image.float()}

    def describe(self) -> str:
        flags = (("compiled", self.config.compile), ("CUDA graphs", self.graphs))
        extras = [name for name, on in flags if on]
        return super().describe() + (f" [{', '.join(extras)}]" if extras else "")

    def close(self) -> None:
        self.model = self._motion = self._decode = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class _Capture:
    """One captured CUDA graph with the buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


class GraphReplay:
    """Calls `fn(*tensors) -> tensor` through CUDA graphs, one capture per input shape and dtype."""

    def __init__(self, fn: GraphFn, device: torch.device):
        self._fn = fn
        self._device = device
        self._captures: dict[tuple, _Capture] = {}
        self._lock = threading.Lock()  # a capture's buffers are shared: one caller at a time

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        with self._lock:
            capture = self._captures.get(key)
            if capture is None:
                capture = self._captures[key] = self._capture(args)
            for buffer, value in zip(capture.inputs, args):
                buffer.copy_(value)
            capture.graph.replay()
            return capture.output.clone()

    def _capture(self, args: tuple[torch.Tensor, ...]) -> _Capture:
        log.info("capturing a CUDA graph for inputs %s", [tuple(a.shape) for a in args])
        inputs = tuple(a.clone() for a in args)
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._fn(*inputs)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._fn(*inputs)
        return _Capture(graph, inputs, output)
