"""The PyTorch backend: eager fp32 (TF32 allowed on CUDA), fp16 or bf16 on GPUs.

The engine takes its model over: it moves it to the device and dtype and folds the constant
weight arithmetic into the weights (`fold_for_inference`), in place. Two speed-ups for the
per-frame graphs (motion encoder and renderer), from EngineConfig:
- `compile` (default on CUDA): torch.compile, compiled lazily on the first call of each shape, with the
  compiler's forms (`KernelForms`): blur and upsampling as stencils, which Inductor fuses, and
  on CUDA channels-last weights, small-map convolutions as matrix products and large-map
  upsampling convolutions in phases (docs/performance.md);
- `cuda_graphs`: each is captured once per input shape and replayed, which removes the launch
  overhead of its ~1500 kernels; inputs are copied into the captured buffers, outputs cloned.
  Every graph is captured on a stream of its own (`capture_stream`: cuBLAS workspaces).
- `compile_in_background`: the first calls of each shape are served by the uncompiled graphs
  (captured in under a second) while a thread of the engine's own compiles the fast ones,
  or loads them from Inductor's cache (~20 s on an H100); then every call takes the fast path.
  The live loop starts this way: its first frames come seconds after the weights are read.
The renderer reads the source maps from `SourceMaps`, converted once per source, not per frame.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from liveanim.contract import FEATURE_NAMES, Tensors, shared_source
from liveanim.engines.base import Engine, EngineConfig
from liveanim.engines.devices import out_of_memory, resolve_dtype
from liveanim.engines.loading import load_model
from liveanim.errors import BackendUnavailable, EngineError
from liveanim.model import LIAX
from liveanim.model.folding import fold_for_inference
from liveanim.model.layers import REFERENCE_FORMS, KernelForms

log = logging.getLogger(__name__)

GraphFn = Callable[..., torch.Tensor]
WARMUP_RUNS = 2  # before a capture: lets cuDNN pick its algorithms and compile run
# Compiled, blur and upsampling are stencils that Inductor fuses. On CUDA also: size-preserving
# convs on maps up to 32x32 as matrix products (cuDNN took 38-66 us for a 1024-channel 3x3 conv
# at 8x8..32x32 on an H100, far from the weight-read bound); the encoders' 1x1 conv of the RGB
# input as one pass of products with its activation; from 128x128 up, the upsampling convs in
# phases (docs/performance.md).
COMPILED_FORMS = KernelForms(filters="stencil")
GPU_FORMS = KernelForms(filters="stencil", gemm_max_side=32, pointwise_max_in=3, phase_min_side=128)
# Compiled graphs are made for batch 1 (live, stills) and this batch (offline chunks): other
# batches are padded or split, since each new shape would compile for minutes.
COMPILED_BATCH = 8


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
        forms = GPU_FORMS if fast_gpu_path else COMPILED_FORMS if self.compiled else REFERENCE_FORMS
        fold_for_inference(self.model, forms, channels_last=fast_gpu_path)
        if fast_gpu_path:
            log.info("the per-frame graphs are compiled %s: a few minutes on the first start with this GPU "
                     "and PyTorch, ~20 s later (Inductor's cache)",
                     "in the background, uncompiled (slower) until then" if config.compile_in_background
                     else "on their first frame")
        self._compiler = BackgroundCompiler(device) if self.compiled and config.compile_in_background else None
        self._source = SourceMaps(device, self.dtype)
        self._render_lock = threading.Lock()  # one source in the maps per call
        self._motion = self._accelerated(self.model.encode_motion)
        self._decode = self._accelerated(lambda z: self.model.decode(z, self._source.maps))

    def _accelerated(self, fn: GraphFn) -> GraphFn:
        replay = (lambda f: GraphReplay(f, self.device)) if self.graphs else (lambda f: f)
        if not self.compiled:
            return replay(fn)
        # no freezing: the weights are folded already, and a graph without baked-in
        # constants can come from Inductor's cache on the next start
        def compiled() -> GraphFn:
            return replay(torch.compile(fn, dynamic=False))

        if self._compiler is not None:
            return BatchBuckets(CompiledWhenReady(compiled, replay(fn), self._compiler), COMPILED_BATCH)
        return BatchBuckets(compiled(), COMPILED_BATCH)

    @property
    def directions(self) -> torch.Tensor:
        return self._directions

    def wait_until_compiled(self, timeout: float | None = None) -> bool:
        """With `compile_in_background`: wait until the graphs of every shape called so far run
        compiled (or failed to compile, and stay uncompiled); False on timeout."""
        return self._compiler.wait(timeout) if self._compiler is not None else True

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
        with self._render_lock:
            self._source.hold([shared_source(inputs[name]) for name in FEATURE_NAMES])
            image = self._decode(inputs["z_target"].to(self.device, self.dtype))
        return {"image": image.float()}

    def describe(self) -> str:
        flags = (("compiled", self.compiled), ("CUDA graphs", self.graphs))
        extras = [name for name, on in flags if on]
        return super().describe() + (f" [{', '.join(extras)}]" if extras else "")

    def close(self) -> None:
        if self._compiler is not None:
            self._compiler.close()
        self.model = self._motion = self._decode = self._source = None
        if self.device.type == "cuda":
            release_cached_memory()


class SourceMaps:
    """The source feature maps in the engine's device, dtype and layout, in tensors that stay put.

    A source is rendered for many frames: converting and copying its maps (~64 M values at full
    width) on every frame took 0.3 ms of a 14.5 ms fp16 render on an H100. The maps are converted
    when other maps are passed than the last ones (told apart by their memory, which stays held,
    so no other tensor can take its place), into the same tensors every time, which captured CUDA
    graphs read. Callers must not change maps in place once they have passed them.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self._device = device
        self._dtype = dtype
        self._held: list[torch.Tensor] = []
        self.maps: tuple[torch.Tensor, ...] = ()

    def hold(self, maps: list[torch.Tensor]) -> None:
        """Make `self.maps` the values of `maps` (batch 1 each)."""
        if len(maps) == len(self._held) and all(map(_same_memory, maps, self._held)):
            return
        if not self.maps:
            # NCHW-contiguous, the layout grid sampling reads (it would copy any other per frame)
            self.maps = tuple(torch.empty(m.shape, device=self._device, dtype=self._dtype) for m in maps)
        for target, source in zip(self.maps, maps, strict=True):
            if target.shape != source.shape:
                raise ValueError(f"source map of shape {tuple(source.shape)} for a model that takes {tuple(target.shape)}")
            target.copy_(source)
        self._held = maps


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr(), a.shape, a.stride(), a.dtype, a.device) == (b.data_ptr(), b.shape, b.stride(), b.dtype, b.device)


class BatchBuckets:
    """Calls `fn(x) -> tensor` with a batch of 1 or `size` only.

    Another batch is split into parts of `size`, and a shorter last part is padded with
    copies of its last item (the model treats every item alone, so the others are unchanged).
    """

    def __init__(self, fn: GraphFn, size: int):
        self._fn = fn
        self._size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] in (1, self._size):
            return self._fn(x)
        parts = []
        for start in range(0, x.shape[0], self._size):
            part = x[start:start + self._size]
            count = part.shape[0]
            if count not in (1, self._size):
                part = torch.cat([part, part[-1:].expand(self._size - count, *part.shape[1:])])
            parts.append(self._fn(part)[:count])
        return torch.cat(parts)


ShapeKey = tuple[tuple[tuple[int, ...], torch.dtype], ...]


def _shape_key(args: tuple[torch.Tensor, ...]) -> ShapeKey:
    return tuple((tuple(a.shape), a.dtype) for a in args)


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


def _finish_gpu_work(tensors: tuple[torch.Tensor, ...]) -> None:
    """Wait for this thread's stream: the tensors are read on another one next."""
    if tensors[0].is_cuda:
        torch.cuda.current_stream(tensors[0].device).synchronize()


class BackgroundCompiler:
    """One thread that prepares compiled graphs, one job at a time (Dynamo compiles one graph
    at a time anyway), so that callers need not wait for them."""

    def __init__(self, device: torch.device):
        self._device = device
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._unfinished = 0
        self._idle = threading.Condition()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job()` on the compiler thread (started on the first job), in inference mode."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="engine-compiler", daemon=True)
            self._thread.start()
        with self._idle:
            self._unfinished += 1
        self._jobs.put(job)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted so far has finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def close(self) -> None:
        """Skip the jobs not started yet; one that runs finishes in the background."""
        self._closed = True
        self._jobs.put(None)

    def _run(self) -> None:
        with torch.inference_mode(), contextlib.ExitStack() as scope:
            if self._device.type == "cuda":
                scope.enter_context(torch.cuda.device(self._device))
            while (job := self._jobs.get()) is not None:
                try:
                    if not self._closed:
                        job()
                finally:
                    with self._idle:
                        self._unfinished -= 1
                        self._idle.notify_all()


class CompiledWhenReady:
    """Calls the compiled graph for the input shapes it is ready for; any other shape goes to
    `interim` while the background compiler prepares the compiled graph for it (compiles or
    loads it, and captures its CUDA graph). A failed preparation leaves that shape on `interim`.

    The compiled graph is made by `make_compiled()`, on the compiler thread: making it imports
    the compiler (seconds). A shape is prepared from its second call on, so that the compiler
    thread does not slow down the first, which captures the interim graph (the live loop's warm-up).
    """

    def __init__(self, make_compiled: Callable[[], GraphFn], interim: GraphFn, compiler: BackgroundCompiler):
        self._make_compiled = make_compiled
        self._compiled: GraphFn | None = None
        self._interim = interim
        self._compiler = compiler
        self._ready: set[ShapeKey] = set()  # added to by the compiler thread
        self._calls: dict[ShapeKey, int] = {}
        self._released: set[ShapeKey] = set()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = _shape_key(args)
        if key in self._ready:
            assert self._compiled is not None
            if key not in self._released and isinstance(self._interim, GraphReplay):
                self._interim.release(key)  # here, not on the compiler thread: no replay of it is under way
            self._released.add(key)
            return self._compiled(*args)
        self._calls[key] = calls = self._calls.get(key, 0) + 1
        if calls == 2:
            example = tuple(a.clone() for a in args)
            _finish_gpu_work(example)  # the compiler thread reads the copies on another stream
            self._compiler.submit(lambda: self._prepare(key, example))
        return self._interim(*args)

    def _prepare(self, key: ShapeKey, example: tuple[torch.Tensor, ...]) -> None:
        shapes = [shape for shape, _ in key]
        started = time.monotonic()
        try:
            if self._compiled is None:
                self._compiled = self._make_compiled()
            self._compiled(*example)
            _finish_gpu_work(example)  # before the copies are freed
        except Exception:
            log.warning("compiling the graph for inputs %s failed; it keeps running uncompiled (slower)",
                        shapes, exc_info=True)
            return
        self._ready.add(key)
        log.info("compiled graph for inputs %s ready after %.0f s: full speed from now on",
                 shapes, time.monotonic() - started)


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
        key = _shape_key(args)
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
