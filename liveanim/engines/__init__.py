"""Inference backends behind one interface (see liveanim/engines/base.py).

    engine = create_engine(EngineConfig())        # 'auto': the fastest backend this machine has
    log.info("running %s", engine.describe())

Backends (`BACKENDS`, the one list the CLI, the window and build-engines offer): 'torch';
'onnxruntime' (its best provider for the device) or 'onnxruntime:cpu', 'onnxruntime:cuda',
'onnxruntime:tensorrt'; 'tensorrt'; 'tensorrt-rtx' (TensorRT for RTX). On an NVIDIA GPU 'auto'
tries TensorRT and TensorRT for RTX (the latter first on RTX-branded GPUs, the ones it is made
for), ONNX Runtime with its TensorRT provider, then PyTorch, logging why each faster one was
skipped; without one it runs PyTorch on the best device (MPS, CPU) and says why. ONNX Runtime
and the TensorRT libraries run exported graphs, exported into the cache folder on first use
(see liveanim/engines/cache.py for its layout).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from liveanim.engines.base import BACKENDS, DEVICES, ENGINE_CHOICES, PRECISIONS, Engine, EngineConfig
from liveanim.engines.cache import cache_root
from liveanim.engines.devices import Gpu, cuda_gpu, no_cuda_reason, resolve_device, resolve_dtype, resolve_precision
from liveanim.errors import BackendUnavailable, EngineError, Fix, UsageError
from liveanim.model import LIAX

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineConfig", "BACKENDS", "DEVICES", "ENGINE_CHOICES", "PRECISIONS", "auto_order",
           "build_for_targets", "create_engine", "export_folder"]

TENSORRT_BACKENDS = ("tensorrt", "tensorrt-rtx")
GPU_BACKENDS = (*TENSORRT_BACKENDS, "onnxruntime:tensorrt")
RTX_BRANDS = ("RTX", "GeForce", "TITAN", "Quadro")  # consumer and workstation GPUs, TensorRT for RTX's own


def auto_order(gpu: Gpu) -> tuple[str, ...]:
    """What 'auto' tries on this GPU, fastest first: the TensorRT libraries (TensorRT for RTX first on
    the RTX GPUs it is made for, TensorRT first on datacenter GPUs), ONNX Runtime's TensorRT provider,
    then torch. ONNX Runtime's CUDA provider is left out: on an H100 it measured slower than PyTorch
    with CUDA graphs (fp16: 60.3 vs 55.3 ms per frame; docs/performance.md)."""
    from liveanim.engines.tensorrt_engine import TENSORRT_RTX

    consumer = any(brand in gpu.name for brand in RTX_BRANDS) and TENSORRT_RTX.runs(gpu)
    native = TENSORRT_BACKENDS[::-1] if consumer else TENSORRT_BACKENDS
    return (*native, "onnxruntime:tensorrt", "torch")


def create_engine(config: EngineConfig, model: LIAX | None = None) -> Engine:
    """The engine `config` asks for; 'auto' picks the fastest backend this machine has.

    model: an already loaded fp32 CPU model of the weights `config` names (tests, benchmarks);
           None loads them, only where needed. The torch backend takes it over (moves it to
           its device and dtype and folds it for inference, in place: no copy).
    An explicit backend that cannot run here raises BackendUnavailable saying why, and what to
    install only where installing can help (never a GPU library on a machine without an NVIDIA GPU).
    """
    if config.precision == "auto":  # the device is looked up only then: an absent one is the backend's to explain
        config = replace(config, precision=resolve_precision("auto", resolve_device(config.device)))
    weights = _Weights(config, model)
    engine = _auto(config, weights) if config.backend == "auto" else _create(config, weights)
    log.info("engine: %s", engine.describe())
    return engine


def export_folder(config: EngineConfig, precision: str) -> Path:
    """Where engines look for the export of `config`'s weights in `precision` (it may not exist yet)."""
    from liveanim.engines.cache import export_dir

    return export_dir(cache_root(config.cache_dir), _Weights(config, None).fingerprint(), precision)


class _Weights:
    """The model behind an engine: loaded at most once, and only where needed (export, torch)."""

    def __init__(self, config: EngineConfig, model: LIAX | None):
        self.config = config
        self._model = model
        self._given = model is not None
        self._fingerprint: str | None = None

    def model(self) -> LIAX:
        if self._model is None:
            from liveanim.engines.loading import load_model

            self._model = load_model(self.config)
        return self._model

    def fingerprint(self) -> str:
        """Names the export folder: cheap for seeded weights and checkpoint files (no full read)."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        """Seeded weights and checkpoint files by their description (a given model must be the
        weights the config names); a model given with no description by the hash of its weights."""
        from liveanim.engines import cache

        if self.config.seeded:
            return cache.seeded_fingerprint(self.config.width, self.config.seed)
        if self._given and self.config.weights is None:
            from liveanim.export import state_dict_sha256

            return cache.model_fingerprint(state_dict_sha256(self._model.state_dict()))
        from liveanim.weights import resolve_weights

        path = resolve_weights(self.config.weights)
        stat = path.stat()
        return cache.file_fingerprint(path, stat.st_size, stat.st_mtime_ns)


def _auto(config: EngineConfig, weights: _Weights) -> Engine:
    device = resolve_device(config.device)
    if device.type != "cuda":
        log.info("engine auto: torch on %s, since the exported engines (%s) need an NVIDIA GPU and %s", device,
                 ", ".join(GPU_BACKENDS), no_cuda_reason() if config.device == "auto" else f"--device {device} was asked for")
        return _create(replace(config, backend="torch"), weights)
    failure: Exception | None = None
    for backend in auto_order(cuda_gpu(device)):
        try:
            return _create(replace(config, backend=backend), weights)
        except BackendUnavailable as why:
            log.info("engine auto: skipping %s: %s", backend, why)
            failure = why
        except EngineError as why:
            log.warning("engine auto: %s failed, trying the next backend: %s", backend, why)
            failure = why
    assert failure is not None
    raise failure


def _create(config: EngineConfig, weights: _Weights) -> Engine:
    backend, _, provider = config.backend.partition(":")
    if backend not in BACKENDS or (provider and backend != "onnxruntime"):
        raise UsageError(f"unknown engine {config.backend!r}; choose auto, {', '.join(BACKENDS)} "
                         "or onnxruntime:cpu|cuda|tensorrt")
    if backend in TENSORRT_BACKENDS:
        return _tensorrt(backend, config, weights)
    device = resolve_device(config.device)
    if backend == "onnxruntime":
        return _onnxruntime(config, device, provider, weights)
    from liveanim.engines.torch_engine.backend import TorchEngine

    return TorchEngine(config, device, weights.model())


def _onnxruntime(config: EngineConfig, device: torch.device, provider: str, weights: _Weights) -> Engine:
    from liveanim.engines.cache import ORT_TENSORRT_DIR
    from liveanim.engines.onnxruntime_engine import (OnnxRuntimeEngine, best_provider, check_provider,
                                                     check_provider_device, import_onnxruntime)

    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"ONNX Runtime runs on the CPU or an NVIDIA GPU here, not {device}.",
                                 fix=Fix.TORCH_ENGINE)
    if provider:
        check_provider_device(provider, device)
    ort = import_onnxruntime(device)
    if provider:
        check_provider(ort, provider, device)
    else:
        provider = best_provider(ort, device)
    _check_exported_precision(config.precision, device)
    root = cache_root(config.cache_dir)
    folder = _exported(weights, config.precision, root)
    return OnnxRuntimeEngine(config, device, folder, provider, root / ORT_TENSORRT_DIR / folder.name)


def _tensorrt(backend: str, config: EngineConfig, weights: _Weights) -> Engine:
    """TensorRT or TensorRT for RTX: the GPU is checked before the library, so that no install is
    suggested where it cannot help."""
    from liveanim.engines.cache import engine_dir
    from liveanim.engines.tensorrt_engine import LIBRARIES, TensorRTEngine, import_library, onnx_precision

    library = LIBRARIES[backend]
    device = resolve_device(config.device)
    if device.type != "cuda":
        raise BackendUnavailable(f"{library.title} needs an NVIDIA GPU to run and {no_cuda_reason()}.",
                                 fix=Fix.BUILD_FOR_OTHER_GPUS if library.jit else None)
    library.check_gpu(cuda_gpu(device))
    trt = import_library(library)
    _check_exported_precision(config.precision, device)
    root = cache_root(config.cache_dir)
    folder = _exported(weights, onnx_precision(trt, config.precision), root)
    return TensorRTEngine(library, config, device, folder, engine_dir(root, backend, folder))


def build_for_targets(config: EngineConfig, targets: tuple[str, ...]) -> dict[str, Path]:
    """TensorRT for RTX engines of `config` (its weights and precision, fp32 or fp16) built for these
    compute capabilities, exported first if needed, without running them: no GPU is needed.
    -> {graph: engine file}."""
    from liveanim.engines.cache import engine_dir
    from liveanim.engines.tensorrt_engine import (LIBRARIES, TensorRTOptions, build_engine_files, check_targets,
                                                  import_library)

    if config.backend not in LIBRARIES:
        raise UsageError(f"--gpu-target builds TensorRT for RTX engines (--engine tensorrt-rtx), not {config.backend}.")
    library = LIBRARIES[config.backend]
    config = replace(config, precision=resolve_precision(config.precision, torch.device("cuda")))  # built for GPUs
    check_targets(library, targets)
    import_library(library)
    _check_exported_precision(config.precision, torch.device("cuda"))
    root = cache_root(config.cache_dir)
    folder = _exported(_Weights(config, None), config.precision, root)
    return build_engine_files(library, folder, engine_dir(root, config.backend, folder), TensorRTOptions(targets=targets))


def _check_exported_precision(precision: str, device: torch.device) -> None:
    """Exported graphs come in fp32 and fp16; reduced precision only on GPUs (as for torch)."""
    from liveanim.export import EXPORT_PRECISIONS

    resolve_dtype(precision, device)
    if precision not in EXPORT_PRECISIONS:
        raise BackendUnavailable(f"{precision} runs on the torch engine only; exported engines are "
                                 f"{' or '.join(EXPORT_PRECISIONS)}.", fix=Fix.TORCH_ENGINE)


def _exported(weights: _Weights, precision: str, cache_root: Path) -> Path:
    """The export folder for these weights and precision; exported now if missing or stale."""
    from liveanim.engines.cache import export_dir
    from liveanim.export import ExportConfig, export_model, read_manifest

    folder = export_dir(cache_root, weights.fingerprint(), precision)
    try:
        read_manifest(folder)
        return folder
    except EngineError as why:
        log.info("exporting the model to %s (once; a few minutes for the full model): %s", folder, why)
    export_model(weights.model(), folder, ExportConfig(precision=precision))
    return folder
