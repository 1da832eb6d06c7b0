"""Benchmark every backend and precision on the same inputs, and check their accuracy.

Per frame (the live loop, batch 1): motion encoder -> latent math z + (a_d - a_0 + a_s) @ Q.T ->
renderer, timed per stage with CUDA events (synchronize-timed elsewhere) and synchronized at the
end of each frame, as the app does. The source is encoded once. Reported: median and p95 per
stage over the timed frames after warm-up, FPS of the whole step, setup time (load, export,
build), peak GPU memory. Accuracy compares each case with PyTorch fp32 (TF32 off) end to end.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from liveanim.contract import FEATURE_NAMES, Tensors
from liveanim.engines import Engine, EngineConfig, create_engine
from liveanim.engines.devices import resolve_device
from liveanim.errors import BackendUnavailable
from liveanim.export.graphs import smooth_images
from liveanim.export.verify import exact_fp32
from liveanim.model import LIAX

log = logging.getLogger(__name__)

GPU_ENGINES = ("torch", "torch+graphs", "torch+compile+graphs", "onnxruntime:cuda", "onnxruntime:tensorrt", "tensorrt",
               "tensorrt-rtx")
CPU_ENGINES = ("torch", "onnxruntime:cpu")
STAGES = ("motion", "latent", "render", "step")
FRAME_POOL = 8  # distinct driving frames, cycled
MIB = 2**20


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    engines:    engine specs: a backend ('torch', 'onnxruntime[:cpu|cuda|tensorrt]', 'tensorrt', 'tensorrt-rtx'), torch
                with '+graphs' (CUDA graphs) and/or '+compile' (torch.compile); empty = all for the device.
    precisions: 'fp32', 'fp16', 'bf16' (cases a backend cannot run are reported as skipped).
    frames:     timed frames per case, after `warmup` untimed ones.
    accuracy:   also compare each case with PyTorch fp32 on `accuracy_frames` frames.
    """

    engines: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")
    frames: int = 100
    warmup: int = 10
    accuracy: bool = False
    accuracy_frames: int = 4


@dataclass(frozen=True)
class CaseResult:
    """One engine spec at one precision: 'ok', 'skipped' (with why) or 'failed' (with the error)."""

    engine: str
    precision: str
    status: str
    reason: str = ""
    describe: str = ""
    setup_s: float | None = None
    source_ms: float | None = None
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    fps: float | None = None
    gpu_torch_peak_mib: float | None = None
    gpu_used_mib: float | None = None
    accuracy: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _Inputs:
    """The benchmark's images on the device: one source, FRAME_POOL driving frames (1,3,512,512)."""

    source: torch.Tensor
    driving: tuple[torch.Tensor, ...]


def default_engines(device: torch.device) -> tuple[str, ...]:
    return GPU_ENGINES if device.type == "cuda" else CPU_ENGINES


def case_config(base: EngineConfig, spec: str, precision: str) -> EngineConfig:
    """The EngineConfig of an engine spec such as 'torch+graphs' or 'onnxruntime:cuda'."""
    backend, *flags = spec.split("+")
    unknown = set(flags) - {"graphs", "compile"}
    if unknown or (flags and backend != "torch"):
        raise ValueError(f"bad engine spec {spec!r}: only torch takes +graphs / +compile")
    return replace(base, backend=backend, precision=precision, cuda_graphs="graphs" in flags,
                   compile="compile" in flags)


def run_bench(base: EngineConfig, bench: BenchConfig, model: LIAX) -> dict[str, Any]:
    """Every case of `bench` on `model` (fp32, CPU; torch cases get copies): a JSON-ready report."""
    device = resolve_device(base.device)
    inputs = _inputs(device)
    reference = _reference(base, model, device, inputs, bench.accuracy_frames) if bench.accuracy else None
    results = []
    for spec in bench.engines or default_engines(device):
        for precision in bench.precisions:
            result = _run_case(case_config(base, spec, precision), spec, model, inputs, bench, reference)
            log.info("%s %s: %s %s", spec, precision, result.status, result.reason or _summary(result))
            results.append(result)
    return {"device": _device_name(device), "torch": torch.__version__, "width": model.width,
            "frames": bench.frames, "warmup": bench.warmup, "results": [asdict(r) for r in results]}


def _run_case(config: EngineConfig, spec: str, model: LIAX, inputs: _Inputs, bench: BenchConfig,
              reference: Tensors | None) -> CaseResult:
    device = inputs.source.device
    free_before = _reset_memory(device)
    started = time.perf_counter()
    engine = None
    try:
        engine = create_engine(config, copy.deepcopy(model) if config.backend == "torch" else model)
        setup_s = time.perf_counter() - started
        source_ms, stages = _time_frames(engine, inputs, bench)
        accuracy = _accuracy(engine, inputs, reference) if reference is not None else {}
        torch_peak, used = _memory(device, free_before)
        return CaseResult(spec, config.precision, "ok", describe=engine.describe(), setup_s=setup_s,
                          source_ms=source_ms, stages_ms=stages, fps=1e3 / stages["step"]["median"],
                          gpu_torch_peak_mib=torch_peak, gpu_used_mib=used, accuracy=accuracy)
    except BackendUnavailable as why:
        return CaseResult(spec, config.precision, "skipped", reason=str(why))
    except Exception as error:  # one broken case must not end the benchmark of the others
        log.exception("%s %s failed", spec, config.precision)
        return CaseResult(spec, config.precision, "failed", reason=f"{type(error).__name__}: {error}")
    finally:
        if engine is not None:
            engine.close()


def _time_frames(engine: Engine, inputs: _Inputs, bench: BenchConfig) -> tuple[float, dict[str, dict[str, float]]]:
    """(source encoding ms, {stage: {median, p95}}) over `bench.frames` frames after warm-up."""
    clock = _Clock(inputs.source.device)
    engine.encode_source({"image": inputs.source})  # first call: lazy initialization, not timed
    marks = [clock.mark()]
    source = engine.encode_source({"image": inputs.source})
    marks.append(clock.mark())
    source_ms = clock.elapsed_ms(marks)[0]
    neutral = engine.encode_motion({"image": inputs.driving[0]})["alpha"]
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for index in range(bench.warmup + bench.frames):
        motion, latent, render = _timed_step(engine, source, neutral, inputs.driving[index % FRAME_POOL], clock)
        if index >= bench.warmup:
            for stage, ms in zip(STAGES, (motion, latent, render, motion + latent + render)):
                samples[stage].append(ms)
    return source_ms, {stage: _stats(values) for stage, values in samples.items()}


def _timed_step(engine: Engine, source: Tensors, neutral: torch.Tensor, frame: torch.Tensor,
                clock: "_Clock") -> list[float]:
    """One live frame; milliseconds of (motion encoder, latent math, renderer)."""
    marks = [clock.mark()]
    alpha = engine.encode_motion({"image": frame})["alpha"]
    marks.append(clock.mark())
    z_target = engine.target_latent(source["z"], source["alpha"] + alpha - neutral)
    marks.append(clock.mark())
    engine.render({"z_target": z_target, **{name: source[name] for name in FEATURE_NAMES}})
    marks.append(clock.mark())
    return clock.elapsed_ms(marks)


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95))}


class _Clock:
    """Marks on the device timeline: CUDA events on NVIDIA GPUs, synchronized wall time elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device

    def mark(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        if self.device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter()

    def elapsed_ms(self, marks: list[Any]) -> list[float]:
        """Milliseconds between consecutive marks (waits for the last one)."""
        if self.device.type == "cuda":
            marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in pairwise(marks)]
        return [(b - a) * 1e3 for a, b in pairwise(marks)]


def _inputs(device: torch.device) -> _Inputs:
    images = smooth_images(1 + FRAME_POOL, seed=1).to(device)
    return _Inputs(images[:1], tuple(images[i:i + 1] for i in range(1, 1 + FRAME_POOL)))


def _run_frames(engine: Engine, inputs: _Inputs, count: int) -> Tensors:
    """The whole pipeline on the first `count` frames: motion codes and images, on the CPU."""
    source = engine.encode_source({"image": inputs.source})
    neutral = engine.encode_motion({"image": inputs.driving[0]})["alpha"]
    alphas, images = [], []
    for frame in inputs.driving[:count]:
        alpha = engine.encode_motion({"image": frame})["alpha"]
        z_target = engine.target_latent(source["z"], source["alpha"] + alpha - neutral)
        image = engine.render({"z_target": z_target, **{name: source[name] for name in FEATURE_NAMES}})["image"]
        alphas.append(alpha.cpu())
        images.append(image.cpu())
    return {"alpha": torch.cat(alphas), "image": torch.cat(images)}


def _reference(base: EngineConfig, model: LIAX, device: torch.device, inputs: _Inputs, count: int) -> Tensors:
    """PyTorch fp32 with TF32 off: what every case's accuracy is measured against."""
    from liveanim.engines.torch_engine.backend import TorchEngine

    config = replace(base, backend="torch", precision="fp32", cuda_graphs=False, compile=False)
    engine = TorchEngine(config, device, copy.deepcopy(model))
    try:
        with exact_fp32():
            return _run_frames(engine, inputs, count)
    finally:
        engine.close()


def _accuracy(engine: Engine, inputs: _Inputs, reference: Tensors) -> dict[str, float | None]:
    """Max / mean abs error of alpha and image against the reference, and the images' PSNR (dB)
    over the reference's value range (outputs are not clamped)."""
    actual = _run_frames(engine, inputs, reference["alpha"].shape[0])
    report = {}
    for name in ("alpha", "image"):
        diff = (actual[name] - reference[name]).abs()
        report |= {f"{name}_max_abs": diff.max().item(), f"{name}_mean_abs": diff.mean().item()}
    value_range = (reference["image"].max() - reference["image"].min()).item()
    mse = (actual["image"] - reference["image"]).square().mean().item()
    report["psnr_db"] = None if mse == 0 else float(10 * np.log10(value_range**2 / mse))  # None: identical
    return report


def _reset_memory(device: torch.device) -> int:
    """Free device memory before a case (bytes), with torch's peak counter reset."""
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.mem_get_info(device)[0]


def _memory(device: torch.device, free_before: int) -> tuple[float | None, float | None]:
    """(torch's peak allocation, device memory in use beyond what was in use before) in MiB.
    The second covers ONNX Runtime's and TensorRT's own allocations; sampled after the run."""
    if device.type != "cuda":
        return None, None
    used = free_before - torch.cuda.mem_get_info(device)[0]
    return torch.cuda.max_memory_allocated(device) / MIB, used / MIB


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def _summary(result: CaseResult) -> str:
    step = result.stages_ms["step"]
    return f"{step['median']:.2f} ms/frame ({result.fps:.1f} FPS)"


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table for the log."""
    header = (f"{'engine':<22} {'prec':<5} {'motion ms':>15} {'render ms':>15} {'step ms':>15} {'FPS':>7} "
              f"{'setup s':>8} {'GPU MiB':>8} {'alpha err':>9} {'PSNR dB':>8}")
    lines = [f"LIA-X width {report['width']} on {report['device']} (torch {report['torch']}), "
             f"median/p95 over {report['frames']} frames", header, "-" * len(header)]
    for r in report["results"]:
        lines.append(_row(r))
    return "\n".join(lines)


def _row(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['engine']:<22} {r['precision']:<5} {r['status']}: {r['reason'][:100]}"
    stages = r["stages_ms"]
    cells = [f"{stages[s]['median']:.2f}/{stages[s]['p95']:.2f}" for s in ("motion", "render", "step")]
    memory = f"{r['gpu_used_mib']:8.0f}" if r["gpu_used_mib"] is not None else f"{'-':>8}"
    accuracy = r["accuracy"]
    alpha = f"{accuracy['alpha_max_abs']:9.1e}" if accuracy else f"{'-':>9}"
    psnr = f"{_psnr_cell(accuracy):>8}"
    return (f"{r['engine']:<22} {r['precision']:<5} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} "
            f"{r['fps']:7.1f} {r['setup_s']:8.1f} {memory} {alpha} {psnr}")


def _psnr_cell(accuracy: dict[str, Any]) -> str:
    if not accuracy:
        return "-"
    return "exact" if accuracy["psnr_db"] is None else f"{accuracy['psnr_db']:.1f}"
