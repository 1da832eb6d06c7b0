"""The ONNX Runtime backend: the exported graphs on the CPU, CUDA or TensorRT execution provider.

Tensors stay where they are: inputs and outputs are torch tensors bound to the session by
pointer (IO binding), on the GPU for CUDA/TensorRT, so no frame goes through host memory.
onnxruntime is imported only when an engine is made.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
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
from liveanim.engines.devices import out_of_memory
from liveanim.engines.exported import ExportedGraphsEngine
from liveanim.engines.tensorrt_engine import DEFAULT_OPTIONS as TENSORRT_PROFILE
from liveanim.engines.tensorrt_engine import import_tensorrt
from liveanim.errors import BackendUnavailable, EngineError
from liveanim.export.manifest import read_manifest

log = logging.getLogger(__name__)

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}
GPU_PROVIDERS = ("tensorrt", "cuda")  # best first
ERRORS_ONLY = 3  # onnxruntime's log severity: no per-node placement warnings
# The CPU provider runs a frame at a time: batches of 4 took 2.4x (motion) and 1.15x (render) the
# time per frame (width 0.5, fp32, 2 cores), and the offline modes send chunks of 8.
CPU_MAX_BATCH = 1


def import_onnxruntime(device: torch.device) -> ModuleType:
    """onnxruntime, or BackendUnavailable with the package that fits this machine."""
    try:
        import onnxruntime
    except ImportError:
        package = "onnxruntime-gpu" if device.type == "cuda" else "onnxruntime"
        raise BackendUnavailable(f"ONNX Runtime is not installed: pip install {package}") from None
    return onnxruntime


def check_provider_device(provider: str, device: torch.device) -> None:
    """BackendUnavailable unless `provider` ('cpu', 'cuda', 'tensorrt') is one for `device` (checked
    before onnxruntime is imported, so that no install is suggested where it cannot help)."""
    if provider not in PROVIDER_NAMES:
        raise BackendUnavailable(f"unknown ONNX Runtime provider {provider!r}; "
                                 f"choose one of {', '.join(PROVIDER_NAMES)}")
    if (provider == "cpu") != (device.type == "cpu"):
        needs = "the CPU" if provider == "cpu" else "an NVIDIA GPU"
        raise BackendUnavailable(f"ONNX Runtime's {provider} provider needs {needs}, not {device}")


def check_provider(ort: ModuleType, provider: str, device: torch.device) -> None:
    """BackendUnavailable unless `provider` ('cpu', 'cuda', 'tensorrt') can serve `device`."""
    check_provider_device(provider, device)
    if PROVIDER_NAMES[provider] not in ort.get_available_providers():
        raise BackendUnavailable(
            f"this onnxruntime ({ort.__version__}) has no {PROVIDER_NAMES[provider]}: "
            "pip uninstall onnxruntime && pip install onnxruntime-gpu")
    if provider == "tensorrt":
        import_tensorrt()  # loads the TensorRT libraries the provider links against


def best_provider(ort: ModuleType, device: torch.device) -> str:
    """The fastest provider for `device`: TensorRT, then CUDA on GPUs; the CPU otherwise."""
    if device.type == "cpu":
        return "cpu"
    reasons = []
    for provider in GPU_PROVIDERS:
        try:
            check_provider(ort, provider, device)
            return provider
        except BackendUnavailable as why:
            reasons.append(str(why))
    raise BackendUnavailable("; ".join(reasons))


class OnnxRuntimeEngine(ExportedGraphsEngine):
    """Runs an export folder (see liveanim/export/) with one ONNX Runtime session per graph."""

    name = "onnxruntime"

    def __init__(self, config: EngineConfig, device: torch.device, export_folder: Path, provider: str,
                 tensorrt_cache: Path | None = None):
        """
        export_folder:  an export of `config.precision` (manifest.json, graphs, directions.npy).
        provider:       'cpu', 'cuda' or 'tensorrt'.
        tensorrt_cache: where the TensorRT provider keeps its engines and timing cache.
        """
        ort = import_onnxruntime(device)
        check_provider(ort, provider, device)
        super().__init__(config, device, export_folder)
        manifest = read_manifest(export_folder)
        assert manifest.precision == config.precision, (manifest.precision, config.precision)
        self.provider = provider
        max_batch = {"tensorrt": TENSORRT_PROFILE.max_batch, "cpu": CPU_MAX_BATCH}.get(provider)
        self._graphs = {
            name: _GraphSession(ort, export_folder / graph.spec.file, graph.spec, device,
                                _providers(provider, device, graph.spec, config.precision, tensorrt_cache), max_batch)
            for name, graph in manifest.graphs.items()
        }

    def describe(self) -> str:
        return f"onnxruntime ({self.provider}) on {self.device} ({self.precision})"


def _providers(provider: str, device: torch.device, spec: GraphSpec, precision: str,
               tensorrt_cache: Path | None) -> list[Any]:
    """The session's provider list, best first, with the CPU as the fallback for leftover nodes."""
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    index = device.index if device.index is not None else torch.cuda.current_device()
    cuda = ("CUDAExecutionProvider", {"device_id": str(index)})
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    return [("TensorrtExecutionProvider", _tensorrt_provider_options(index, spec, precision, tensorrt_cache)),
            cuda, "CPUExecutionProvider"]


def _tensorrt_provider_options(index: int, spec: GraphSpec, precision: str, cache: Path | None) -> dict[str, str]:
    """TensorRT provider options: engine + timing caches, fp16, and the batch profile of our engines."""
    assert cache is not None, "the TensorRT provider needs a cache folder"
    cache.mkdir(parents=True, exist_ok=True)
    options = {"device_id": str(index), "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
               "trt_fp16_enable": str(precision == "fp16")}
    if spec.dynamic_inputs:
        def shapes(batch: int) -> str:
            return ",".join(f"{t.name}:{'x'.join(map(str, t.resolve(batch)))}" for t in spec.dynamic_inputs)
        options |= {"trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(TENSORRT_PROFILE.opt_batch),
                    "trt_profile_max_shapes": shapes(TENSORRT_PROFILE.max_batch)}
    return options


class _GraphSession:
    """One graph's session, fed and read through IO binding on torch tensors."""

    def __init__(self, ort: ModuleType, path: Path, spec: GraphSpec, device: torch.device, providers: list[Any],
                 max_batch: int | None):
        """max_batch: calls with larger batches are split (the TensorRT provider's profile); None: no limit."""
        options = ort.SessionOptions()
        options.log_severity_level = ERRORS_ONLY
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped exceptions
            raise _failure(error, f"loading {path}", device) from error
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if self.session.get_providers()[0] != wanted:
            raise BackendUnavailable(
                f"ONNX Runtime could not start {wanted} (it fell back to {self.session.get_providers()}); "
                "check that onnxruntime-gpu matches your CUDA and cuDNN (and TensorRT) versions: "
                "https://onnxruntime.ai/docs/execution-providers/")
        self.spec = spec
        self.device = device
        self.max_batch = max_batch

    def run(self, inputs: Tensors) -> Tensors:
        """inputs by name -> float32 outputs by name, on the engine's device."""
        tensors = {t.name: _prepare(inputs[t.name], self.device) for t in self.spec.inputs}
        batch = batch_of(self.spec, tensors)
        if self.max_batch is None or batch <= self.max_batch:
            return self._run(tensors, batch)
        return concat_batches(self.spec, [self._run(*part) for part in
                                          split_batch(self.spec, tensors, batch, self.max_batch)])

    def _run(self, tensors: Tensors, batch: int) -> Tensors:
        try:
            outputs = {t.name: torch.empty(t.resolve(batch), device=self.device) for t in self.spec.outputs}
        except torch.cuda.OutOfMemoryError:
            raise out_of_memory(self.device, f"running {self.spec.name}") from None
        binding = self.session.io_binding()
        index = _device_index(self.device)
        for name, tensor in tensors.items():
            binding.bind_input(name, self.device.type, index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        for name, tensor in outputs.items():
            binding.bind_output(name, self.device.type, index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch are ready
        try:
            self.session.run_with_iobinding(binding)  # returns when the outputs are written
        except Exception as error:  # onnxruntime raises its own untyped exceptions
            raise _failure(error, f"running {self.spec.name}", self.device) from error
        return outputs


def _prepare(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return shared_source(tensor).to(device=device, dtype=torch.float32).contiguous()


def _device_index(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    return device.index if device.index is not None else torch.cuda.current_device()


def _failure(error: Exception, doing: str, device: torch.device) -> EngineError:
    """ONNX Runtime's error as ours; running out of GPU memory gets its own advice."""
    if "out of memory" in str(error).lower() and device.type == "cuda":
        return out_of_memory(device, doing)
    return EngineError(f"ONNX Runtime failed {doing}: {error}")
