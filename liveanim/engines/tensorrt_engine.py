"""The TensorRT backends: TensorRT and TensorRT for RTX, engines built from the exported graphs.

One code path for both libraries: their Python APIs are TensorRT's, and what differs (module,
how engines are targeted and cached) is a `TensorRTLibrary` value:

- TensorRT builds on the GPU that runs the engine and times kernels there (a timing cache);
  an engine runs on that GPU model and TensorRT version only.
- TensorRT for RTX (`pip install tensorrt-rtx`, consumer and workstation GPUs of compute capability
  8.0, 8.6, 8.9 and 12.x for our engines; Turing's 7.5 lacks the fp32 products they need) builds for compute capabilities, with no GPU needed, and compiles
  kernels just in time on the GPU that runs them, kept in a runtime cache per GPU.

Written to the TensorRT 10 Python API. fp16 on TensorRT 10 builds the fp32 graphs with
BuilderFlag.FP16 and pins the flow heads to fp32 by layer name (OBEY_PRECISION_CONSTRAINTS);
TensorRT 11 and TensorRT for RTX have no such flags, so there the fp16 export (explicit casts) is
built as a strongly typed network. Either way liveanim/export/precision.py decides what stays fp32.

Engines run on torch's current CUDA stream over torch-allocated tensors, bound by name
(`set_tensor_address` + `execute_async_v3`); no host synchronization per call.
The library is imported only when an engine is made.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from liveanim.contract import (
    GraphSpec,
    Tensors,
    batch_of,
    concat_batches,
    shared_source,
    split_batch,
)
from liveanim.engines.base import EngineConfig
from liveanim.engines.cache import EngineFiles, EngineKey, stale_reason
from liveanim.engines.devices import MEMORY_ADVICE, Gpu, cuda_gpu, gpu_memory_status, out_of_memory
from liveanim.engines.exported import ExportedGraphsEngine
from liveanim.errors import BackendUnavailable, EngineError, Fix, UsageError
from liveanim.export.manifest import read_manifest
from liveanim.export.precision import FP32_MODULE_PREFIXES, HALF_GRAPHS, keeps_fp32
from liveanim.files import write_atomically

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorRTLibrary:
    """What differs between TensorRT and TensorRT for RTX.

    backend: the engine's name ('tensorrt', 'tensorrt-rtx'), also its cache folder.
    module:  the Python module it is imported as.
    title:   its name in messages.
    jit:     engines are built for compute capabilities and their kernels compiled just in time
             on the GPU that runs them (runtime cache), rather than built and timed on that GPU.
    runs_on: the compute capabilities it runs LiveAnim's engines on; empty: every GPU the library supports.
    gpus:    the GPUs those are, in words.
    cannot:  compute capabilities the library supports but cannot build LiveAnim's engines for, and why.
    """

    backend: str
    module: str
    title: str
    jit: bool
    runs_on: tuple[str, ...] = ()
    gpus: str = ""
    cannot: tuple[tuple[str, str], ...] = ()

    def install_command(self) -> str:
        """The pip command for its wheels; TensorRT's must match torch's CUDA major version."""
        if self.jit:
            return "pip install tensorrt-rtx"
        major = (torch.version.cuda or "12").split(".")[0]
        return f"pip install tensorrt-cu{major}"

    def runs(self, gpu: Gpu) -> bool:
        return not self.runs_on or gpu.compute_capability in self.runs_on

    def check_gpu(self, gpu: Gpu) -> None:
        """BackendUnavailable where the library refuses to run on this GPU."""
        if not self.runs(gpu):
            raise BackendUnavailable(f"{self.title} does not run on {gpu.name} "
                                     f"{self.why_not(gpu.compute_capability)}.", fix=Fix.TENSORRT_OR_TORCH)

    def why_not(self, capability: str) -> str:
        """Why there are no engines for `capability` (one that `runs_on` lacks), in words."""
        reason = dict(self.cannot).get(capability)
        if reason is not None:
            return f"(compute capability {capability}): {reason}"
        return f"(compute capability {capability}); it runs on {', '.join(self.runs_on)} ({self.gpus})"


TENSORRT = TensorRTLibrary("tensorrt", "tensorrt", "TensorRT", jit=False)
# NVIDIA's support matrix: Turing (7.5), Ampere (8.0, 8.6), Ada (8.9), Blackwell (12.0, 12.1). On
# Turing it has no fp32 matrix products, and our encoders and flow heads are fp32: its builder
# (1.7.1, 2026-12-03) refused the source encoder ("FP32 GEMM is not supported" for SM75).
TENSORRT_RTX = TensorRTLibrary(
    "tensorrt-rtx", "tensorrt_rtx", "TensorRT for RTX", jit=True, runs_on=("8.0", "8.6", "8.9", "12.0", "12.1"),
    gpus="GeForce RTX 30 to 50 series, RTX workstation GPUs from Ampere on",
    cannot=(("7.5", "on Turing (GeForce RTX 20 series) it has no fp32 matrix products, which LiveAnim's "
                    "encoders and flow heads need"),))
LIBRARIES = {library.backend: library for library in (TENSORRT, TENSORRT_RTX)}
# what a TensorRT for RTX engine is built for by default, where no GPU decides (NVIDIA's default:
# Ampere RTX and later)
PORTABLE_TARGETS = ("8.6", "8.9", "12.0")


@dataclass(frozen=True)
class TensorRTOptions:
    """Build options that shape an engine (they are part of its cache key).

    opt_batch: the batch size kernels are tuned for (the live app renders one frame at a time).
    max_batch: the largest batch the engines accept (offline rendering in chunks).
    targets:   TensorRT for RTX: the compute capabilities to build for ('8.6', ...); empty: the GPU
               that runs the engine.
    """

    opt_batch: int = 1
    max_batch: int = 4
    targets: tuple[str, ...] = ()


DEFAULT_OPTIONS = TensorRTOptions()


def import_library(library: TensorRTLibrary) -> ModuleType:
    """The library's module, or BackendUnavailable saying how to install it."""
    try:
        return importlib.import_module(library.module)
    except ImportError:
        raise BackendUnavailable(f"{library.title} is not installed: {library.install_command()}.",
                                 fix=Fix.OTHER_ENGINE) from None


def import_tensorrt() -> ModuleType:
    """tensorrt (ONNX Runtime's TensorRT provider links against its libraries)."""
    return import_library(TENSORRT)


def check_targets(library: TensorRTLibrary, targets: tuple[str, ...]) -> None:
    """UsageError unless `library` can build for each compute capability of `targets`."""
    if targets and not library.jit:
        raise UsageError(f"{library.title} builds for the GPU it runs on; --gpu-target is for tensorrt-rtx.")
    unknown = [cc for cc in targets if cc not in library.runs_on]
    if unknown:
        reasons = "; ".join(f"{cc}: {why}" for cc, why in library.cannot if cc in unknown)
        raise UsageError(f"{library.title} builds LiveAnim's engines for compute capabilities "
                         f"{', '.join(library.runs_on)}, not {', '.join(unknown)}" + (f" ({reasons})." if reasons else "."))


def weakly_typed(trt: ModuleType) -> bool:
    """TensorRT 10 (precision flags and per-layer constraints) rather than 11 or for RTX (strong typing only)."""
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")


def onnx_precision(trt: ModuleType, precision: str) -> str:
    """Which export an engine of `precision` is built from (see the module docstring)."""
    return "fp32" if weakly_typed(trt) else precision


def engine_precision(graph: str, precision: str) -> str:
    """Only the renderer runs in reduced precision (liveanim/export/precision.py)."""
    return precision if graph in HALF_GRAPHS else "fp32"


class TensorRTEngine(ExportedGraphsEngine):
    """Three engines (source encoder, motion encoder, renderer) of one library over one export."""

    def __init__(self, library: TensorRTLibrary, config: EngineConfig, device: torch.device, export_folder: Path,
                 engine_folder: Path, options: TensorRTOptions = DEFAULT_OPTIONS):
        """
        export_folder: the export to build from (`onnx_precision` tells which precision).
        engine_folder: where serialized engines, their keys and the timing or runtime caches are kept.
        """
        assert device.type == "cuda" and config.precision in ("fp32", "fp16"), (device, config.precision)
        trt = import_library(library)
        super().__init__(config, device, export_folder)
        self.name = library.backend
        self.version = trt.__version__
        manifest = read_manifest(export_folder)
        builder = _Builder(library, trt, engine_folder, options, cuda_gpu(device))
        with torch.cuda.device(device):
            self._graphs = {name: builder.graph(export_folder / graph.spec.file, graph.spec, graph.sha256,
                                                engine_precision(name, config.precision), device)
                            for name, graph in manifest.graphs.items()}

    def describe(self) -> str:
        return f"{self.name} {self.version} on {self.device} ({self.precision})"

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.save_runtime_cache()
        super().close()


def build_engine_files(library: TensorRTLibrary, export_folder: Path, engine_folder: Path,
                       options: TensorRTOptions) -> dict[str, Path]:
    """Build (or find up to date) the engines of an export for `options.targets` without loading
    them: TensorRT for RTX needs no GPU for this. -> {graph: engine file}."""
    assert library.jit and options.targets, "only TensorRT for RTX builds for named compute capabilities"
    builder = _Builder(library, import_library(library), engine_folder, options, gpu=None)
    manifest = read_manifest(export_folder)
    return {name: builder.built(export_folder / graph.spec.file, graph.spec, graph.sha256,
                                engine_precision(name, manifest.precision)).engine
            for name, graph in manifest.graphs.items()}


class _Builder:
    """Finds cached engines or builds them, sharing one logger and runtime (and TensorRT's timing cache)."""

    def __init__(self, library: TensorRTLibrary, trt: ModuleType, folder: Path, options: TensorRTOptions,
                 gpu: Gpu | None):
        """gpu: the GPU that runs the engines; None: build only, for `options.targets` (no GPU needed)."""
        self.library = library
        self.trt = trt
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.options = options
        self.gpu = gpu
        self.logger = _logger(trt, library.title)
        self.runtime = trt.Runtime(self.logger) if gpu is not None else None
        # TensorRT's kernel timings depend on the GPU and TensorRT only: shared by the engines of every export
        self.timing_cache = None if library.jit else folder.parent / f"timing-{self._gpu_key('', '', '').digest()}.cache"

    def _gpu_key(self, onnx_sha256: str, precision: str, options: str) -> EngineKey:
        assert self.gpu is not None, "this builder only builds"
        return EngineKey(onnx_sha256, self.gpu.name, self.gpu.compute_capability, self.trt.__version__, precision,
                         options)

    def _options(self, precision: str) -> str:
        typing = "weak" if weakly_typed(self.trt) else "strong"
        options = f"batch={self.options.opt_batch}..{self.options.max_batch};typing={typing}"
        return options + f";fp32={','.join(FP32_MODULE_PREFIXES)}" if precision == "fp16" else options

    def key(self, onnx_sha256: str, precision: str) -> EngineKey:
        """What a cached engine must have been built for: this GPU (TensorRT), or compute
        capabilities, the targets or this GPU's (TensorRT for RTX)."""
        if not self.library.jit:
            return self._gpu_key(onnx_sha256, precision, self._options(precision))
        targets = self.options.targets or (self.gpu.compute_capability,)
        return EngineKey(onnx_sha256, "", ",".join(targets), self.trt.__version__, precision, self._options(precision))

    def built(self, onnx_path: Path, spec: GraphSpec, onnx_sha256: str, precision: str) -> EngineFiles:
        """The engine files of one graph: from the cache if built for this key, else built now."""
        files = EngineFiles.of(self.folder, f"{spec.name}-{precision}")
        reason = stale_reason(files, self.key(onnx_sha256, precision))
        if reason is not None:
            self._build(files, onnx_path, spec, onnx_sha256, precision, reason)
        return files

    def graph(self, onnx_path: Path, spec: GraphSpec, onnx_sha256: str, precision: str,
              device: torch.device) -> "_Graph":
        """One graph ready to run: its engine loaded (built first if needed) and its context made."""
        files = self.built(onnx_path, spec, onnx_sha256, precision)
        engine = self._deserialize(files.engine.read_bytes())
        if engine is None:  # a truncated file, or a library update the key did not catch
            self._build(files, onnx_path, spec, onnx_sha256, precision,
                        f"{self.library.title} could not load the cached engine")
            engine = self._deserialize(files.engine.read_bytes())
        if engine is None:
            raise EngineError(f"{self.library.title} built the {spec.name} engine but could not load it on "
                              f"{self.gpu.name} (its messages are in the log above). If the GPU ran out of "
                              f"memory ({gpu_memory_status(device)}): {MEMORY_ADVICE}")
        runtime_cache = None
        if self.library.jit:
            runtime_cache = _RuntimeCache(files.runtime_cache(self._gpu_key(onnx_sha256, precision,
                                                                            self._options(precision))))
        return _Graph(self.trt, engine, spec, device, self.options.max_batch, runtime_cache)

    def _deserialize(self, data: bytes) -> Any:
        """The engine, or None where the library refuses it (another version, a truncated file, no memory)."""
        try:
            return self.runtime.deserialize_cuda_engine(data)
        except RuntimeError as error:
            log.info("%s refused a serialized engine: %s", self.library.title, error)
            return None

    def _build(self, files: EngineFiles, onnx_path: Path, spec: GraphSpec, onnx_sha256: str, precision: str,
               reason: str) -> None:
        key = self.key(onnx_sha256, precision)
        target = (f"compute capability {key.compute_capability.replace(',', ', ')}" if self.library.jit
                  else key.gpu_name)
        log.info("building the %s %s engine (%s) for %s: %s", self.library.title, spec.name, precision, target, reason)
        started = time.perf_counter()
        data = self._serialized(onnx_path, spec, precision, key)
        write_atomically(files.engine, data)
        files.key.write_text(key.to_json())
        log.info("built the %s %s engine in %.0f s (%.1f MB)", self.library.title, spec.name,
                 time.perf_counter() - started, len(data) / 1e6)

    def _serialized(self, onnx_path: Path, spec: GraphSpec, precision: str, key: EngineKey) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        strong = not weakly_typed(trt)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):  # reads the external weights beside the graph
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"{self.library.title} could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        if precision == "fp16" and not strong:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            _pin_fp32_layers(trt, network, spec)
        _add_batch_profile(builder, config, spec, self.options)
        if self.library.jit:
            _set_targets(trt, config, key.compute_capability.split(","))
        else:
            self._load_timing_cache(config)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            memory = f" If it ran out of GPU memory ({gpu_memory_status(torch.device('cuda'))}): {MEMORY_ADVICE}"
            raise EngineError(f"{self.library.title} could not build the {spec.name} engine (its messages are in the "
                              f"log above).{memory if self.gpu is not None else ''}")
        if self.timing_cache is not None:
            self.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
        return bytes(serialized)

    def _load_timing_cache(self, config: Any) -> None:
        """Reuse kernel timings across builds on this GPU + TensorRT (a rebuild takes seconds, not minutes)."""
        data = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
            log.info("the timing cache %s does not fit this GPU / TensorRT; starting a new one", self.timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _set_targets(trt: ModuleType, config: Any, targets: list[str]) -> None:
    """Build for these compute capabilities ('8.9' -> ComputeCapability.SM89)."""
    config.num_compute_capabilities = len(targets)
    for index, target in enumerate(targets):
        config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + target.replace(".", "")), index)


class _RuntimeCache:
    """TensorRT for RTX's kernels compiled just in time for one engine on this GPU, kept on disk:
    a later start loads them instead of compiling again."""

    def __init__(self, path: Path):
        self.path = path
        self.cache: Any = None

    def context(self, engine: Any) -> Any:
        """An execution context that compiles into (and reads from) this cache."""
        config = engine.create_runtime_config()
        self.cache = config.create_runtime_cache()
        if self.path.is_file() and not self.cache.deserialize(self.path.read_bytes()):
            log.info("the runtime cache %s does not fit this GPU, driver or library; compiling anew", self.path)
        config.set_runtime_cache(self.cache)
        return engine.create_execution_context(config)

    def save(self) -> None:
        if self.cache is None:
            return
        write_atomically(self.path, memoryview(self.cache.serialize()))


def _pin_fp32_layers(trt: ModuleType, network: Any, spec: GraphSpec) -> None:
    """Keep the float layers of the fp32 modules (their names start with the module path) in fp32."""
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if not keeps_fp32(layer.name) or any(o.dtype not in (trt.float32, trt.float16) for o in outputs):
            continue  # other modules, and shape arithmetic (integer tensors)
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
        pinned += 1
    if pinned == 0:
        raise EngineError(f"no layer of {spec.name} is named after {FP32_MODULE_PREFIXES}: "
                          "the export predates this LiveAnim; delete it to export again.")
    log.info("%s: %d layers kept in fp32 (%s)", spec.name, pinned, ", ".join(FP32_MODULE_PREFIXES))


def _add_batch_profile(builder: Any, config: Any, spec: GraphSpec, options: TensorRTOptions) -> None:
    if not spec.dynamic_inputs:
        return
    profile = builder.create_optimization_profile()
    for tensor in spec.dynamic_inputs:
        profile.set_shape(tensor.name, tensor.resolve(1), tensor.resolve(options.opt_batch),
                          tensor.resolve(options.max_batch))
    config.add_optimization_profile(profile)


class _Graph:
    """One engine and its execution context, run by tensor name on torch's current stream."""

    def __init__(self, trt: ModuleType, engine: Any, spec: GraphSpec, device: torch.device, max_batch: int,
                 runtime_cache: _RuntimeCache | None):
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        assert names == set(spec.input_names + spec.output_names), (names, spec)
        assert all(engine.get_tensor_dtype(name) == trt.float32 for name in names), spec.name
        self.engine = engine
        self.runtime_cache = runtime_cache
        self.context = runtime_cache.context(engine) if runtime_cache else engine.create_execution_context()
        if self.context is None:
            raise out_of_memory(device, f"creating the {spec.name} context")
        self.spec = spec
        self.device = device
        self.max_batch = max_batch

    def save_runtime_cache(self) -> None:
        if self.runtime_cache is not None:
            self.runtime_cache.save()

    def run(self, inputs: Tensors) -> Tensors:
        """inputs by name -> float32 outputs by name; batches beyond the profile are split."""
        tensors = {t.name: shared_source(inputs[t.name]).to(self.device, torch.float32).contiguous()
                   for t in self.spec.inputs}
        batch = batch_of(self.spec, tensors)
        if batch <= self.max_batch:
            return self._run(tensors, batch)
        return concat_batches(self.spec, [self._run(*part) for part in
                                          split_batch(self.spec, tensors, batch, self.max_batch)])

    def _run(self, tensors: Tensors, batch: int) -> Tensors:
        try:
            outputs = {t.name: torch.empty(t.resolve(batch), device=self.device) for t in self.spec.outputs}
        except torch.cuda.OutOfMemoryError:
            raise out_of_memory(self.device, f"running {self.spec.name}") from None
        for name, tensor in tensors.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
        for name, tensor in (tensors | outputs).items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        # torch's caching allocator orders any reuse of these buffers after this stream's work
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise EngineError(f"the engine failed running {self.spec.name} (see its messages above)")
        return outputs


def _logger(trt: ModuleType, title: str) -> Any:
    """A TensorRT logger that writes to our log (its INFO and VERBOSE chatter at DEBUG)."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG, severity.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, level: Any, message: str) -> None:
            log.log(levels.get(level, logging.DEBUG), "%s: %s", title, message)

    return _Logger()
