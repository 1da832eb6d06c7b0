"""The PyTorch backend: eager fp32 (TF32 allowed on CUDA), fp16 or bf16 on GPUs.

The engine takes its model over: it moves it to the device and dtype and folds the constant
weight arithmetic into the weights (`fold_for_inference`), in place. Two speed-ups for the
per-frame graphs (motion encoder and renderer), from EngineConfig:
- `compile` (default on CUDA): torch.compile, compiled lazily on the first call of each shape, with the
  compiler's forms (`KernelForms`): blur and upsampling as stencils, which Inductor fuses, and
  on CUDA channels-last weights and small-map convolutions as matrix products
  (docs/performance.md);
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
from liveanim.model.layers import KernelForms, fold_for_inference, set_kernel_forms

log = logging.getLogger(__name__)

GraphFn = Callable[..., torch.Tensor]
WARMUP_RUNS = 2  # before a capture: lets cuDNN pick its algorithms and compile run
# Compiled on CUDA, size-preserving convs on maps up to 32x32 run as matrix products: cuDNN took
# 38-66 us for a 1024-channel 3x3 conv at 8x8..32x32 on an H100, far from the weight-read bound.
GPU_GEMM_MAX_SIDE = 32
# Compiled graphs are made for batch 1 (live, stills) and this batch (offline chunks): other
# batches are padded or split, since each new shape would compile for minutes.
COMPILED_BATCH = 8


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
        """model: an already loaded model, which the engine takes over (moved to `device` and the
        precision's dtype, and folded for inference, in place: pass a copy to keep the original)."""
        super().__init__(config, device)
        self.dtype = resolve_dtype(config.precision, device)
        self.graphs = config.cuda_graphs if config.cuda_graphs is not None else device.type == "cuda"
        self.compiled = config.compile if config.compile is not None else device.type == "cuda"
        if self.graphs and device.type != "cuda":
            raise BackendUnavailable(f"CUDA graphs need an NVIDIA GPU, not {device}; leave them off.")
        model = model if model is not None else load_model(config)
        try:
            self.model = model.to(device=device, dtype=self.dtype)
        except torch.cuda.OutOfMemoryError:
            raise out_of_memory(device, "loading the model") from None
        self._directions = self.model.directions().float()
        fast_gpu_path = self.compiled and device.type == "cuda"
        fold_for_inference(self.model, channels_last=fast_gpu_path)
        if fast_gpu_path:
            log.info("the per-frame graphs are compiled on their first frame: a few minutes on the first "
                     "start with this GPU and PyTorch, seconds later (Inductor's cache)")
        if self.compiled:
            set_kernel_forms(self.model, KernelForms(filters="stencil",
                                                     gemm_max_side=GPU_GEMM_MAX_SIDE if fast_gpu_path else 0))
        self._motion = self._accelerated(self.model.encode_motion)
        self._decode = self._accelerated(lambda z, *feats: self.model.decode(z, feats))

    def _accelerated(self, fn: GraphFn) -> GraphFn:
        if self.compiled:
            # no freezing: the weights are folded already, and a graph without baked-in
            # constants can come from Inductor's cache on the next start
            fn = torch.compile(fn, dynamic=False)
        if self.graphs:
            fn = GraphReplay(fn, self.device)
        return BatchBuckets(fn, COMPILED_BATCH) if self.compiled else fn

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
        # compiled: one layout for every caller, so one compiled graph, found in the cache
        layout = torch.channels_last if self.compiled else torch.preserve_format
        image = inputs["image"].to(self.device, self.dtype, memory_format=layout)
        return {"alpha": self._motion(image).float()}

    @torch.inference_mode()
    def render(self, inputs: Tensors) -> Tensors:
        # NCHW-contiguous, the layout grid sampling reads (it would copy any other per frame)
        feats = (shared_source(inputs[name]).to(self.device, self.dtype, memory_format=torch.contiguous_format)
                 for name in FEATURE_NAMES)
        image = self._decode(inputs["z_target"].to(self.device, self.dtype), *feats)
        return {"image": image.float()}

    def describe(self) -> str:
        flags = (("compiled", self.compiled), ("CUDA graphs", self.graphs))
        extras = [name for name, on in flags if on]
        return super().describe() + (f" [{', '.join(extras)}]" if extras else "")

    def close(self) -> None:
        self.model = self._motion = self._decode = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class BatchBuckets:
    """Calls `fn(*tensors) -> tensor` with batch 1 or `size` only.

    Another batch is split into parts of `size`, and a shorter last part is padded with
    copies of its last item (the model treats every item alone, so the others are unchanged).
    Arguments whose batch is 1 (a shared source) pass as they are.
    """

    def __init__(self, fn: GraphFn, size: int):
        self._fn = fn
        self._size = size

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        batch = max(a.shape[0] for a in args)
        if batch in (1, self._size):
            return self._fn(*args)
        parts = []
        for start in range(0, batch, self._size):
            count = min(self._size, batch - start)
            parts.append(self._fn(*(self._part(a, batch, start, count) for a in args))[:count])
        return torch.cat(parts)

    def _part(self, arg: torch.Tensor, batch: int, start: int, count: int) -> torch.Tensor:
        if arg.shape[0] != batch:
            return arg
        part = arg[start:start + count]
        if count in (1, self._size):
            return part
        return torch.cat([part, part[-1:].expand(self._size - count, *part.shape[1:])])


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
