"""The TensorRT backend: engines built from the exported graphs, cached per GPU and TensorRT version.

Written to the TensorRT 10 Python API. fp16 on TensorRT 10 builds the fp32 graphs with
BuilderFlag.FP16 and pins the flow heads to fp32 by layer name (OBEY_PRECISION_CONSTRAINTS);
TensorRT 11 removed those flags, so there the fp16 export (explicit casts) is built as a
strongly typed network. Either way export/precision.py decides what stays fp32.

Engines run on torch's current CUDA stream over torch-allocated tensors, bound by name
(`set_tensor_address` + `execute_async_v3`); no host synchronization per call.
tensorrt is imported only when an engine is made.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from engines.base import EngineConfig, Tensors
from engines.cache import EngineFiles, EngineKey, stale_reason
from engines.exported import ExportedGraphsEngine
from engines.torch_engine import MEMORY_ADVICE, gpu_memory_status, out_of_memory
from export.contract import (
    GraphSpec,
    batch_of,
    concat_batches,
    shared_source,
    split_batch,
)
from export.manifest import read_manifest
from export.precision import FP32_MODULE_PREFIXES, HALF_GRAPHS, keeps_fp32
from liveanim.errors import BackendUnavailable, EngineError, Fix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorRTOptions:
    """Build options that shape an engine (they are part of its cache key).

    opt_batch: the batch size kernels are tuned for (the live app renders one frame at a time).
    max_batch: the largest batch the engines accept (offline rendering in chunks).
    """

    opt_batch: int = 1
    max_batch: int = 4


DEFAULT_OPTIONS = TensorRTOptions()


def install_command() -> str:
    """The pip command for the TensorRT wheels that match torch's CUDA major version."""
    major = (torch.version.cuda or "12").split(".")[0]
    return f"pip install tensorrt-cu{major}"


def import_tensorrt() -> ModuleType:
    """tensorrt, or BackendUnavailable saying how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed: {install_command()}.", fix=Fix.OTHER_ENGINE) from None
    return tensorrt


def weakly_typed(trt: ModuleType) -> bool:
    """TensorRT 10 (precision flags and per-layer constraints) rather than 11 (strong typing only)."""
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")


def onnx_precision(trt: ModuleType, precision: str) -> str:
    """Which export an engine of `precision` is built from (see the module docstring)."""
    return "fp32" if weakly_typed(trt) else precision


class TensorRTEngine(ExportedGraphsEngine):
    """Three TensorRT engines (source encoder, motion encoder, renderer) over one export."""

    name = "tensorrt"

    def __init__(self, config: EngineConfig, device: torch.device, export_folder: Path, engine_folder: Path,
                 options: TensorRTOptions = DEFAULT_OPTIONS):
        """
        export_folder: the export to build from (`onnx_precision` tells which precision).
        engine_folder: where serialized engines, their keys and the timing cache are kept.
        """
        if device.type != "cuda":
            raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU, not {device}.")
        if config.precision not in ("fp32", "fp16"):
            raise BackendUnavailable(f"TensorRT engines are fp32 or fp16; {config.precision} runs on the torch engine.",
                                     fix=Fix.TORCH_ENGINE)
        trt = import_tensorrt()
        super().__init__(config, device, export_folder)
        self.trt_version = trt.__version__
        manifest = read_manifest(export_folder)
        builder = _Builder(trt, device, engine_folder, options)
        with torch.cuda.device(device):
            self._graphs = {name: _Graph(trt, builder.engine(export_folder / graph.spec.file, graph.spec, graph.sha256,
                                                              config.precision), graph.spec, device, options.max_batch)
                            for name, graph in manifest.graphs.items()}

    def describe(self) -> str:
        return f"tensorrt {self.trt_version} on {self.device} ({self.precision})"


class _Builder:
    """Loads cached engines or builds them, sharing one logger, runtime and timing cache."""

    def __init__(self, trt: ModuleType, device: torch.device, folder: Path, options: TensorRTOptions):
        self.trt = trt
        self.device = device
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.options = options
        self.logger = _logger(trt)
        self.runtime = trt.Runtime(self.logger)
        major, minor = torch.cuda.get_device_capability(device)
        self.gpu = (torch.cuda.get_device_name(device), f"{major}.{minor}")
        # kernel timings depend on the GPU and TensorRT only: shared by the engines of every export
        self.timing_cache = folder.parent / f"timing-{EngineKey('', *self.gpu, trt.__version__, '').digest()}.cache"

    def key(self, onnx_sha256: str, precision: str) -> EngineKey:
        typing = "weak" if weakly_typed(self.trt) else "strong"
        options = f"batch={self.options.opt_batch}..{self.options.max_batch};typing={typing}"
        if precision == "fp16":
            options += f";fp32={','.join(FP32_MODULE_PREFIXES)}"
        return EngineKey(onnx_sha256, *self.gpu, self.trt.__version__, precision, options)

    def engine(self, onnx_path: Path, spec: GraphSpec, onnx_sha256: str, precision: str) -> Any:
        """The deserialized engine of one graph: from the cache if still valid, else built now."""
        precision = precision if spec.name in HALF_GRAPHS else "fp32"
        files = EngineFiles.of(self.folder, f"{spec.name}-{precision}")
        key = self.key(onnx_sha256, precision)
        reason = stale_reason(files, key)
        if reason is None:
            engine = self._deserialize(files.engine.read_bytes())
            if engine is not None:
                return engine
            reason = "TensorRT could not load the cached engine"
        log.info("building the TensorRT %s engine (%s; %s): this takes minutes, once per GPU",
                 spec.name, precision, reason)
        data = self._build(onnx_path, spec, precision)
        tmp = files.engine.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(files.engine)
        files.key.write_text(key.to_json())
        engine = self._deserialize(data)
        if engine is None:
            raise out_of_memory(self.device, f"loading the TensorRT {spec.name} engine")
        return engine

    def _deserialize(self, data: bytes) -> Any:
        """The engine, or None where TensorRT refuses it (another version, a truncated file, no memory)."""
        try:
            return self.runtime.deserialize_cuda_engine(data)
        except RuntimeError as error:
            log.info("TensorRT refused a serialized engine: %s", error)
            return None

    def _build(self, onnx_path: Path, spec: GraphSpec, precision: str) -> bytes:
        trt = self.trt
        started = time.perf_counter()
        builder = trt.Builder(self.logger)
        strong = not weakly_typed(trt)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):  # reads the external weights beside the graph
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        if precision == "fp16" and not strong:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            _pin_fp32_layers(trt, network, spec)
        _add_batch_profile(builder, config, spec, self.options)
        self._load_timing_cache(config)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"TensorRT could not build the {spec.name} engine (its messages are in the log above). "
                              f"If it ran out of GPU memory ({gpu_memory_status(self.device)}): {MEMORY_ADVICE}",
                              fix=Fix.FP16)
        self.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
        log.info("built the TensorRT %s engine in %.0f s", spec.name, time.perf_counter() - started)
        return bytes(serialized)

    def _load_timing_cache(self, config: Any) -> None:
        """Reuse kernel timings across builds on this GPU + TensorRT (a rebuild takes seconds, not minutes)."""
        data = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
            log.info("the timing cache %s does not fit this GPU / TensorRT; starting a new one", self.timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


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

    def __init__(self, trt: ModuleType, engine: Any, spec: GraphSpec, device: torch.device, max_batch: int):
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        assert names == set(spec.input_names + spec.output_names), (names, spec)
        assert all(engine.get_tensor_dtype(name) == trt.float32 for name in names), spec.name
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise out_of_memory(device, f"creating the TensorRT {spec.name} context")
        self.spec = spec
        self.device = device
        self.max_batch = max_batch

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
            raise EngineError(f"TensorRT failed running {self.spec.name} (see its messages above)")
        return outputs


def _logger(trt: ModuleType) -> Any:
    """A TensorRT logger that writes to our log (its INFO and VERBOSE chatter at DEBUG)."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG, severity.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, level: Any, message: str) -> None:
            log.log(levels.get(level, logging.DEBUG), "TensorRT: %s", message)

    return _Logger()
