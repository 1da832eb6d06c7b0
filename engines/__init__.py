"""Inference backends behind one interface (see engines/base.py).

    engine = create_engine(EngineConfig())        # 'auto': the fastest backend this machine has
    log.info("running %s", engine.describe())

Backends: 'torch'; 'onnxruntime' (its best provider for the device) or 'onnxruntime:cpu',
'onnxruntime:cuda', 'onnxruntime:tensorrt'; 'tensorrt'. 'auto' tries TensorRT, ONNX Runtime with
its TensorRT provider, then PyTorch on the best device (CUDA, MPS, CPU), logging why each faster
one was skipped. ONNX Runtime and TensorRT run exported graphs, exported into the
cache folder on first use (see engines/cache.py for its layout).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from engines.base import FEATURE_NAMES, Engine, EngineConfig, Tensors
from engines.devices import resolve_device, resolve_dtype
from liveanim.errors import BackendUnavailable, EngineError, Fix, UsageError
from liveanim.model import LIAX

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineConfig", "Tensors", "FEATURE_NAMES", "BACKENDS", "create_engine", "export_folder"]

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# Fastest first. ONNX Runtime's CUDA provider is left out: on an H100 it measured slower than
# PyTorch with CUDA graphs (fp16: 60.3 vs 55.3 ms per frame; docs/performance.md).
AUTO_ORDER = ("tensorrt", "onnxruntime:tensorrt", "torch")


def create_engine(config: EngineConfig, model: LIAX | None = None) -> Engine:
    """The engine `config` asks for; 'auto' picks the fastest backend this machine has.

    model: an already loaded fp32 CPU model of the weights `config` names (tests, benchmarks);
           None loads them, only where needed. The torch backend takes it over (moves it to
           its device and dtype and folds it for inference, in place: no copy).
    An explicit backend that cannot run here raises BackendUnavailable saying what to install.
    """
    config = _resolve_precision(config)
    weights = _Weights(config, model)
    engine = _auto(config, weights) if config.backend == "auto" else _create(config, weights)
    log.info("engine: %s", engine.describe())
    return engine


def _resolve_precision(config: EngineConfig) -> EngineConfig:
    """'auto' precision: fp16 on CUDA (3-4x faster, PSNR ~67 dB against fp32: docs/performance.md),
    fp32 elsewhere."""
    if config.precision != "auto":
        return config
    precision = "fp16" if resolve_device(config.device).type == "cuda" else "fp32"
    return replace(config, precision=precision)


def export_folder(config: EngineConfig, precision: str) -> Path:
    """Where engines look for the export of `config`'s weights in `precision` (it may not exist yet)."""
    from engines.cache import export_dir

    return export_dir(_cache_root(config), _Weights(config, None).fingerprint(), precision)


class _Weights:
    """The model behind an engine: loaded at most once, and only where needed (export, torch)."""

    def __init__(self, config: EngineConfig, model: LIAX | None):
        self.config = config
        self._model = model
        self._given = model is not None
        self._fingerprint: str | None = None

    def model(self) -> LIAX:
        if self._model is None:
            from engines.loading import load_model

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
        from engines import cache

        if self.config.seeded:
            return cache.seeded_fingerprint(self.config.width, self.config.seed)
        if self._given and self.config.weights is None:
            from export import state_dict_sha256

            return cache.model_fingerprint(state_dict_sha256(self._model.state_dict()))
        from liveanim.weights import resolve_weights

        path = resolve_weights(self.config.weights)
        stat = path.stat()
        return cache.file_fingerprint(path, stat.st_size, stat.st_mtime_ns)


def _auto(config: EngineConfig, weights: _Weights) -> Engine:
    failure: Exception | None = None
    for backend in AUTO_ORDER:
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
    if backend == "tensorrt":
        return _tensorrt(config, weights)
    device = resolve_device(config.device)
    if backend == "onnxruntime":
        return _onnxruntime(config, device, provider, weights)
    from engines.torch_engine import TorchEngine

    return TorchEngine(config, device, weights.model())


def _onnxruntime(config: EngineConfig, device: torch.device, provider: str, weights: _Weights) -> Engine:
    from engines.cache import ORT_TENSORRT_DIR
    from engines.onnxruntime_engine import OnnxRuntimeEngine, best_provider, check_provider, import_onnxruntime

    ort = import_onnxruntime(device)
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"ONNX Runtime runs on the CPU or an NVIDIA GPU here, not {device}.",
                                 fix=Fix.TORCH_ENGINE)
    if provider:
        check_provider(ort, provider, device)
    else:
        provider = best_provider(ort, device)
    _check_exported_precision(config.precision, device)
    root = _cache_root(config)
    folder = _exported(weights, config.precision, root)
    return OnnxRuntimeEngine(config, device, folder, provider, root / ORT_TENSORRT_DIR / folder.name)


def _tensorrt(config: EngineConfig, weights: _Weights) -> Engine:
    from engines.cache import tensorrt_dir
    from engines.tensorrt_engine import TensorRTEngine, import_tensorrt, onnx_precision

    trt = import_tensorrt()
    device = resolve_device(config.device)
    if device.type != "cuda":
        raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU; PyTorch sees none (device: {device}).")
    _check_exported_precision(config.precision, device)
    root = _cache_root(config)
    folder = _exported(weights, onnx_precision(trt, config.precision), root)
    return TensorRTEngine(config, device, folder, tensorrt_dir(root, folder))


def _check_exported_precision(precision: str, device: torch.device) -> None:
    """Exported graphs come in fp32 and fp16; reduced precision only on GPUs (as for torch)."""
    from export import EXPORT_PRECISIONS

    resolve_dtype(precision, device)
    if precision not in EXPORT_PRECISIONS:
        raise BackendUnavailable(f"{precision} runs on the torch engine only; exported engines are "
                                 f"{' or '.join(EXPORT_PRECISIONS)}.", fix=Fix.TORCH_ENGINE)


def _cache_root(config: EngineConfig) -> Path:
    if config.cache_dir is not None:
        return config.cache_dir
    from liveanim.weights import default_cache_dir

    return default_cache_dir()


def _exported(weights: _Weights, precision: str, cache_root: Path) -> Path:
    """The export folder for these weights and precision; exported now if missing or stale."""
    from engines.cache import export_dir
    from export import ExportConfig, export_model, read_manifest

    folder = export_dir(cache_root, weights.fingerprint(), precision)
    try:
        read_manifest(folder)
        return folder
    except EngineError as why:
        log.info("exporting the model to %s (once; a few minutes for the full model): %s", folder, why)
    export_model(weights.model(), folder, ExportConfig(precision=precision))
    return folder
