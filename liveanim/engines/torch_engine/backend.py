"""The PyTorch backend: eager fp32 (TF32 allowed on CUDA), fp16 or bf16 on GPUs, bf16 on CPUs with bf16 instructions.

The engine takes its model over: it moves it to the device and dtype and folds the constant
weight arithmetic into the weights (`fold_for_inference`), in place. Two speed-ups for the
per-frame graphs (motion encoder and renderer), from EngineConfig:
- `compile` (default on CUDA where Triton runs: `compile_decision`): exported and compiled by
  Inductor on the first call of each shape, and saved in the engine cache, from where later starts
  load it without tracing (saved_graphs.py); with the compiler's forms (`KernelForms`): blur and upsampling
  as stencils, which Inductor fuses, and on CUDA channels-last weights, small-map convolutions as
  matrix products and large-map upsampling convolutions in phases (docs/performance.md); only
  for a batch of 1 or `COMPILED_BATCH` (batching.py). On CUDA the uncompiled graphs (where Triton
  is absent, and while a first start compiles) run in the same forms, channels-last, with their
  eager forms (`KernelForms.eager_forms`: 37.5 ms per frame against 47.7-49.7 on an H200);
- `cuda_graphs` (cuda_graphs.py): each is captured once per input shape and replayed, which removes the
  launch overhead of its ~1500 kernels; inputs are copied into the captured buffers, outputs cloned.
  Every graph is captured on a stream of its own (`capture_stream`: cuBLAS workspaces).
- `compile_in_background` (compiler.py): the first calls of each shape are served by the uncompiled
  graphs (captured in under a second) while a thread of the engine's own prepares the fast ones;
  then every call takes the fast path. On the first start with this GPU and PyTorch child processes
  compile and save each graph (prefill.py: minutes, outside this process, so the uncompiled frames
  keep their pace: Inductor holds Python's lock while it compiles), all at once (the renderer's
  parts each by its own, where it is compiled in parts: `render_parts`), and the thread then loads
  them.
  On later starts each saved graph is loaded where it is first called (1-4 s per graph on an
  H200): full speed from the first frame.
  The live loop starts this way: its first frames come seconds after the weights are read, and it
  shows `optimizing()`'s progress, timed against the last start (compile_times.py).
The renderer reads the source maps from `SourceMaps`, converted once per source, not per frame.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from dataclasses import replace
from typing import Callable, Sequence

import torch

from liveanim.contract import FEATURE_NAMES, Tensors, shared_source
from liveanim.engines.base import Engine, EngineConfig, OptimizingProgress
from liveanim.engines.cache import cache_root
from liveanim.engines.devices import cpu_runs_bf16, gpu_compiler_missing, out_of_memory, resolve_dtype
from liveanim.engines.loading import load_model
from liveanim.engines.torch_engine.batching import BatchBuckets, GraphFn
from liveanim.engines.torch_engine.compile_times import CompileTimes, compile_key
from liveanim.engines.torch_engine.compiler import BackgroundCompiler, ChildJob, CompiledWhenReady
from liveanim.engines.torch_engine.cuda_graphs import GraphReplay, release_cached_memory
from liveanim.engines.torch_engine.prefill import MOTION_GRAPH, RENDER_GRAPH, PrefillJob, child_slots, stages_label
from liveanim.engines.torch_engine.saved_graphs import GRAPHS_DIR, GraphStore, SavedGraph, import_loader
from liveanim.errors import BackendUnavailable, Fix
from liveanim.model import LIAX
from liveanim.model.decoder import STAGE_NAMES, Carry
from liveanim.model.folding import fold_for_inference
from liveanim.model.fused_conv import triton_available
from liveanim.model.layers import KernelForms

log = logging.getLogger(__name__)

# Compiled, blur and upsampling are stencils that Inductor fuses. On CUDA also: size-preserving
# convs on maps up to 32x32 as matrix products (cuDNN took 38-66 us for a 1024-channel 3x3 conv
# at 8x8..32x32 on an H100, far from the weight-read bound); the encoders' 1x1 conv of the RGB
# input as one pass of products with its activation; from 128x128 up, the upsampling convs in
# phases (docs/performance.md).
COMPILED_FORMS = KernelForms(filters="stencil")
# Uncompiled off CUDA (the CPU, MPS): the reference forms with their eager forms, 13% less time per
# render and 19% per motion code on a 2-core CPU (fp32, width 1.0).
UNCOMPILED_FORMS = KernelForms(eager_forms=True)
GPU_FORMS = KernelForms(filters="stencil", gemm_max_side=32, pointwise_max_in=3, phase_min_side=128, eager_forms=True)
# Our fused Triton convs (3x3 from 64x64 up, modulation and epilogue inside) in fp16/bf16 where
# Triton exists: off until scripts/triton_conv_gpu.py measures them faster than cuDNN + Inductor's
# epilogues (fp32 keeps cuDNN's TF32 convs; the kernel's fp32 path is exact, for tests).
TRITON_CONV = False
TRITON_FORMS = replace(GPU_FORMS, triton_min_side=64)
# Where the convs run channels-last: cuDNN's fast kernels read it, and on a 2-core CPU (oneDNN, width
# 1.0) a motion code took 1.3 s against 1.9 s in fp32 and 0.6 s against 0.8 s in bf16. MPS: not measured.
CHANNELS_LAST_DEVICES = ("cuda", "cpu")
# Where the uncompiled graphs run a batch frame by frame: the eager forms fold a frame's style into
# the conv weights at batch 1 only, and on a 2-core CPU batches of 4 took 1.6x (motion) and 1.7-1.8x
# (render) the time per frame (width 0.5, fp32 and bf16). CUDA and MPS: not measured.
FRAME_BY_FRAME_DEVICES = ("cpu",)
# Compiled graphs are made for batch 1 (live, stills) and this batch (offline chunks): other
# batches are padded or split, since each new shape would compile for minutes.
COMPILED_BATCH = 8
# The compiled renderer in parts, by decoder stages (first, stop), each compiled by a child process of
# its own at once on a first start: Inductor compiles a graph on one thread. On an H200 (seeded
# full-width weights, fp16, one device session) a first start reached full speed at 48 s against 103 s
# for the whole renderer's child, with compiled frames of 16.4 ms against 16.7 ms (docs/performance.md).
RENDER_IN_PARTS = True
STAGE_PARTS = tuple((stage, stage + 1) for stage in range(len(STAGE_NAMES)))
WHOLE_RENDERER = ((0, len(STAGE_NAMES)),)


def gpu_forms(dtype: torch.dtype) -> KernelForms:
    return TRITON_FORMS if TRITON_CONV and dtype != torch.float32 and triton_available() else GPU_FORMS


class TorchEngine(Engine):
    """Runs our `LIAX` module directly; the reference every other backend is checked against."""

    name = "torch"

    def __init__(self, config: EngineConfig, device: torch.device, model: LIAX | None = None):
        """model: an already loaded model, which the engine takes over (moved to `device` and the
        precision's dtype, and folded for inference, in place: pass a copy to keep the original)."""
        super().__init__(config, device)
        self.dtype = resolve_dtype(self.config.precision, device)
        self.graphs = config.cuda_graphs if config.cuda_graphs is not None else device.type == "cuda"
        self.compiled = compile_decision(config.compile, device)
        if self.graphs and device.type != "cuda":
            raise BackendUnavailable(f"CUDA graphs need an NVIDIA GPU, not {device}; leave them off.")
        on_gpu = device.type == "cuda"  # the GPU forms run uncompiled too (`KernelForms.eager_forms`)
        forms = gpu_forms(self.dtype) if on_gpu else COMPILED_FORMS if self.compiled else UNCOMPILED_FORMS
        channels_last = device.type in CHANNELS_LAST_DEVICES
        self.model = self._take_over(model if model is not None else load_model(config), forms, channels_last)
        self._directions = self.model.directions().float()
        # one layout for every caller: one compiled graph (found in the cache)
        self._image_layout = torch.channels_last if self.compiled or channels_last else torch.preserve_format
        if self.compiled and on_gpu:
            log.info("the per-frame graphs are compiled %s on the first start with this GPU and PyTorch "
                     "(minutes) and saved in the engine cache; later starts load them in seconds",
                     "in the background, running uncompiled (slower) meanwhile," if config.compile_in_background
                     else "at their first frame")
        motion = MotionGraph(self.model)
        parts = [RenderPart(self.model, first, stop) for first, stop in render_parts(device)]
        self._cache = self._store = self._compiler = None
        if self.compiled:
            self._cache = cache_root(config.cache_dir)
            key = compile_key(device, self.precision, self.model.width, forms)
            self._store = GraphStore(self._cache / GRAPHS_DIR, key)
            import_loader()
            if config.compile_in_background:
                largest = max(weight_bytes(graph) for graph in (motion, *parts))
                self._compiler = BackgroundCompiler(device, CompileTimes(self._cache, key),
                                                    child_slots(device, largest, graphs=1 + len(parts)))
        if device.type == "cpu" and self.dtype == torch.float32 and cpu_runs_bf16():
            log.info("this CPU multiplies bf16 in hardware: precision bf16 takes about half the time per frame "
                     "(PSNR 41-47 dB against fp32 on seeded weights; docs/performance.md)")
        self._source = SourceMaps(device, self.dtype)
        self._render_lock = threading.Lock()  # one source in the maps per call
        self._modules_lock = threading.Lock()  # no module called while a graph is exported (SavedGraph)
        self._motion = self._accelerated(MOTION_GRAPH, motion, self._saved(MOTION_GRAPH, motion))
        chain = RenderChain(parts, [self._saved(_part_name(part), part) for part in parts]) if self.compiled else None
        self._decode = self._accelerated(RENDER_GRAPH, RenderPart(self.model), chain,
                                         lambda: self._source.maps, [(part.first, part.stop) for part in parts])

    def _take_over(self, model: LIAX, forms: KernelForms, channels_last: bool) -> LIAX:
        """`model` on the engine's device in its dtype, folded for inference in `forms` (in place)."""
        try:
            model = model.to(device=self.device, dtype=self.dtype)
        except torch.cuda.OutOfMemoryError:
            raise out_of_memory(self.device, "loading the model") from None
        fold_for_inference(model, forms, channels_last=channels_last)
        return model

    def _saved(self, name: str, module: torch.nn.Module) -> SavedGraph | None:
        """`module`'s saved graph, where the engine compiles."""
        return SavedGraph(name, module, self._store, self._modules_lock) if self.compiled else None

    def _accelerated(self, name: str, module: torch.nn.Module, saved: SavedGraph | RenderChain | None,
                     held: Callable[[], tuple[torch.Tensor, ...]] = tuple,
                     parts: Sequence[tuple[int, int] | None] = (None,)) -> GraphFn:
        """`module` as the engine calls it: with its first input only, `held()` passed after it;
        compiled, `saved` (made of `parts`, each compiled by a child of its own on a first start)."""
        def called(graph: GraphFn) -> GraphFn:
            return lambda x: graph(x, *held())

        def eager(x: torch.Tensor) -> torch.Tensor:
            with self._modules_lock:
                return module(x, *held())

        replay = (lambda f: GraphReplay(f, self.device)) if self.graphs else (lambda f: f)
        if saved is None:
            uncompiled = replay(eager)
            return BatchBuckets(uncompiled, 1) if self.device.type in FRAME_BY_FRAME_DEVICES else uncompiled
        compiled = replay(called(saved))
        if self._compiler is not None:
            jobs = [PrefillJob(name, (), self.model.width, self.precision, str(self.device), TRITON_CONV,
                               str(self._cache), part=part) for part in parts]
            graphs = saved.graphs if isinstance(saved, RenderChain) else (saved,)

            def children(x: torch.Tensor) -> list[ChildJob]:
                """A child per part not loaded yet (a first start cut short may have saved some),
                and the load of what it saves."""
                return [(replace(job, shape=tuple(x.shape)), functools.partial(graph.load, x))
                        for job, graph in zip(jobs, graphs, strict=True) if not graph.ready(x)]

            return BatchBuckets(CompiledWhenReady(name, compiled, replay(eager), self._compiler, children,
                                                  lambda x: saved.load(x, *held())), COMPILED_BATCH)
        return BatchBuckets(compiled, COMPILED_BATCH)

    def compile_render_part(self, stages: tuple[int, int], z_target: torch.Tensor, carry: tuple[torch.Tensor, ...],
                            maps: tuple[torch.Tensor, ...]) -> None:
        """Compile (or load) the renderer's part of decoder stages `stages` for inputs like these:
        the latent, what the part before it hands on (`RenderPart`; none for the first part) and
        the source's maps. What a child process does (placeholder.py), whatever parts this engine's
        own renderer has."""
        if not self.compiled:
            raise BackendUnavailable("this engine does not compile its graphs")
        first, stop = stages
        part = RenderPart(self.model, first, stop)
        with torch.inference_mode(), self._render_lock:
            self._source.hold(list(maps))  # the maps in the layout the renderer is called with
            self._saved(_part_name(part), part)(z_target.to(self.device, self.dtype), *carry,
                                                *self._source.maps[first:stop])

    @property
    def directions(self) -> torch.Tensor:
        return self._directions

    @property
    def prepare_frames(self) -> int:
        """Compiled: two, since a shape's first call loads its saved graph (or captures the
        uncompiled one) and its second starts compiling it (`CompiledWhenReady`)."""
        return 2 if self.compiled else super().prepare_frames

    def wait_until_compiled(self, timeout: float | None = None) -> bool:
        """With `compile_in_background`: wait until the graphs of every shape called so far run
        compiled (or failed to compile, and stay uncompiled); False on timeout."""
        return self._compiler.wait(timeout) if self._compiler is not None else True

    def optimizing(self) -> OptimizingProgress | None:
        """With `compile_in_background`: how far the compiler thread is."""
        return self._compiler.progress() if self._compiler is not None else None

    @torch.inference_mode()
    def encode_source(self, inputs: Tensors) -> Tensors:
        with self._modules_lock:
            state = self.model.encode_source(inputs["image"].to(self.device, self.dtype))
        out = {"z": state.z, "alpha": state.alpha, **dict(zip(FEATURE_NAMES, state.feats))}
        return {name: t.float() for name, t in out.items()}

    @torch.inference_mode()
    def encode_motion(self, inputs: Tensors) -> Tensors:
        image = inputs["image"].to(self.device, self.dtype, memory_format=self._image_layout)
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


class MotionGraph(torch.nn.Module):
    """The motion encoder as a module of its own: what is compiled and saved."""

    def __init__(self, model: LIAX):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_motion(image)

    def reads(self) -> list[torch.nn.Module]:
        """The modules whose weights the graph reads."""
        return [self.model.enc]


class RenderPart(torch.nn.Module):
    """Decoder stages `first`..`stop`-1 with the source's maps of those stages as inputs
    (`SourceMaps`), not as state: a saved graph is called with every tensor it reads. The first
    part starts from the latent; the others take the `Carry` of the part before them. The last
    returns the image, the others their `Carry`. (0, 7): the whole renderer."""

    def __init__(self, model: LIAX, first: int = 0, stop: int = len(STAGE_NAMES)):
        super().__init__()
        self.model = model
        self.first = first
        self.stop = stop

    def forward(self, z_target: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        decoder = self.model.dec
        styles = decoder.styles(z_target, self.first, self.stop)
        if self.first == 0:
            carry, maps = decoder.start(z_target.shape[0], styles), tensors
        else:
            carry, maps = Carry(*tensors[:len(Carry._fields)]), tensors[len(Carry._fields):]
        for index, feat in zip(range(self.first, self.stop), maps, strict=True):
            carry = decoder.run_stage(index, carry, styles, feat)
        if self.stop == len(STAGE_NAMES):
            return carry.rgb
        # one layout for what a part hands on, however it was computed: a child compiles its part
        # for inputs laid out by an uncompiled run of the stages before it (placeholder.py: other
        # forms), the part is then called with the compiled parts' outputs, and a compiled graph
        # takes its inputs' layout only
        return tuple(t.contiguous(memory_format=torch.channels_last) for t in carry)

    def reads(self) -> list[torch.nn.Module]:
        """The modules whose weights the part reads: the styles' (batched in the bank once folded,
        else in each stage's convs), the start's in the first part, and its stages'."""
        decoder = self.model.dec
        start = [decoder.input, decoder.conv1] if self.first == 0 else []
        stages = [module for index in range(self.first, self.stop) for module in decoder.stage(index)]
        return [module for module in (decoder.bank, *start, *stages) if module is not None]


def weight_bytes(graph: MotionGraph | RenderPart) -> int:
    """The memory of the weights that `graph` reads (a child process that compiles it holds these)."""
    return sum(t.numel() * t.element_size() for module in graph.reads()
               for t in itertools.chain(module.parameters(), module.buffers()))


class RenderChain:
    """The compiled renderer: the saved graphs of its parts called one after the other (a CUDA
    graph captures them all as one)."""

    def __init__(self, parts: list[RenderPart], graphs: list[SavedGraph]):
        self._parts = parts
        self.graphs = tuple(graphs)

    def __call__(self, z_target: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
        carry: tuple[torch.Tensor, ...] = ()
        for part, graph in zip(self._parts, self.graphs, strict=True):
            carry = graph(z_target, *carry, *maps[part.first:part.stop])
        return carry

    def load(self, z_target: torch.Tensor, *maps: torch.Tensor) -> bool:
        """Load every part's saved graph that there is (`SavedGraph.load`); whether all are ready."""
        return all([graph.load(z_target) for graph in self.graphs])  # a list: every part tried


def _part_name(part: RenderPart) -> str:
    """A render part's graph in the log and in its file's name."""
    stages = stages_label((part.first, part.stop))
    return f"{RENDER_GRAPH} {stages}" if stages else RENDER_GRAPH


def render_parts(device: torch.device) -> tuple[tuple[int, int], ...]:
    """The compiled renderer's parts on `device`, as decoder stage ranges: by stages on CUDA where
    `RENDER_IN_PARTS`; elsewhere one graph (the CPU's compiles were not measured so)."""
    return STAGE_PARTS if RENDER_IN_PARTS and device.type == "cuda" else WHOLE_RENDERER


def compile_decision(asked: bool | None, device: torch.device) -> bool:
    """Whether to compile the per-frame graphs (Inductor): as asked, and by default on CUDA, where it is
    3x faster, wherever Triton can make the kernels; without it the uncompiled graphs run (CUDA
    graphs still on). Compiling asked for where it cannot run is an error, not a quiet fallback:
    a run (or a benchmark) that asked for compiled graphs would otherwise report the slow ones."""
    if asked is False or device.type != "cuda":
        return bool(asked)  # the CPU compiles with a C++ compiler, MPS with Metal: no Triton needed
    missing = gpu_compiler_missing(device)
    if missing is None:
        return True
    if asked:
        raise BackendUnavailable(f"--compile cannot run here: {missing}.", fix=Fix.NO_COMPILE)
    log.info("the per-frame graphs are not compiled on this machine: %s; they run uncompiled (slower)",
             missing)
    return False


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
