"""CUDA graphs for the per-frame graphs: one capture per input shape, each on a stream of its own,
and the process-wide lock that keeps captures apart from the release of cached memory."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass

import torch

from liveanim.engines.torch_engine.batching import GraphFn, ShapeKey, shape_key
from liveanim.errors import EngineError

log = logging.getLogger(__name__)

WARMUP_RUNS = 2  # before a capture: lets cuDNN pick its algorithms and compile run

# CUDA graphs are captured one at a time, and cached memory is released only between captures:
# PyTorch's allocator cannot release memory while any thread captures (an internal assert).
# Other work goes on meanwhile: captures are thread-local.
_CAPTURING = threading.Lock()
# stream (`cuda_stream`) -> the graph captured on it; under _CAPTURING
_CAPTURE_STREAMS: dict[int, weakref.ref[torch.cuda.CUDAGraph]] = {}


def release_cached_memory() -> None:
    """Give the GPU memory that PyTorch caches but no tensor uses back to the driver."""
    with _CAPTURING:
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class _Capture:
    """One captured CUDA graph with the buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


def capture_stream(device: torch.device, graph: torch.cuda.CUDAGraph) -> torch.cuda.Stream:
    """A stream to capture `graph` on that no other live graph was captured on.

    PyTorch keys cuBLAS workspaces by stream, and a graph keeps the address of the workspace
    it was captured with. Graphs captured on one stream (`torch.cuda.graph`'s default) share a
    workspace, so two of them replayed at once on two streams (the motion and the render
    graphs) write into it together; and freeing one of them frees the workspace of all
    (pytorch/pytorch#193402). The live loop hung then, during and after the background
    compile: cuBLAS kernels spun on the GPU for a minute or more (100% busy at 290 W).
    """
    with _CAPTURING:
        for _ in range(64):  # PyTorch hands out its 32 pooled streams per priority in turn
            stream = torch.cuda.Stream(device)
            holder = _CAPTURE_STREAMS.get(stream.cuda_stream)
            if holder is None or holder() is None:  # a graph's reference dies with its workspace
                _CAPTURE_STREAMS[stream.cuda_stream] = weakref.ref(graph)
                return stream
    raise EngineError("too many CUDA graphs are alive at once; close the engines that are no longer used")


class GraphReplay:
    """Calls `fn(*tensors) -> tensor` through CUDA graphs, one capture per input shape and dtype."""

    def __init__(self, fn: GraphFn, device: torch.device):
        self._fn = fn
        self._device = device
        self._captures: dict[tuple, _Capture] = {}
        self._lock = threading.Lock()  # a capture's buffers are shared: one caller at a time

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = shape_key(args)
        with self._lock:
            capture = self._captures.get(key)
            if capture is None:
                capture = self._captures[key] = self._capture(args)
            for buffer, value in zip(capture.inputs, args):
                buffer.copy_(value)
            capture.graph.replay()
            return capture.output.clone()

    def release(self, key: ShapeKey) -> None:
        """Free the capture for `key` and its memory; call it from the thread that replays it
        (it waits for the last replay to finish on that thread's stream)."""
        with self._lock:
            if self._captures.pop(key, None) is not None:
                torch.cuda.current_stream(self._device).synchronize()
                release_cached_memory()

    def _capture(self, args: tuple[torch.Tensor, ...]) -> _Capture:
        log.info("capturing a CUDA graph for inputs %s", [tuple(a.shape) for a in args])
        inputs = tuple(a.clone() for a in args)
        graph = torch.cuda.CUDAGraph()
        stream = capture_stream(self._device, graph)
        # warm-up on the capture stream: its cuBLAS workspace is made here, outside the capture
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_RUNS):
                self._fn(*inputs)
        torch.cuda.current_stream(self._device).wait_stream(stream)
        stream.synchronize()
        with _CAPTURING:
            torch.cuda.empty_cache()  # the warm-up runs' activations: the capture has a pool of its own
            # thread-local: other threads (the live loop, a background compile) keep using the GPU
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                output = self._fn(*inputs)
        return _Capture(graph, inputs, output)
