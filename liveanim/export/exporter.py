"""Export a LIA-X model to the three ONNX graphs + directions.npy + manifest.json, and check them.

    manifest = export_model(model, out_dir, ExportConfig(precision="fp16"))
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from liveanim.contract import (DIRECTIONS_FILE, FEATURE_NAMES, GRAPH_NAMES, MANIFEST_FILE, MOTION_ENCODER, RENDERER,
                               SOURCE_ENCODER, GraphSpec, graph_specs)
from liveanim.export.graphs import GRAPH_MODULES, smooth_images
from liveanim.export.manifest import ExportedGraph, Manifest, files_sha256, state_dict_sha256
from liveanim.export.onnx_export import export_graph, graph_files
from liveanim.export.precision import HALF_GRAPHS, half_model
from liveanim.export.verify import TOLERANCES, check_onnx, compare_outputs, exact_fp32, run_onnx_cpu
from liveanim.model import LIAX

log = logging.getLogger(__name__)

EXPORT_PRECISIONS = ("fp32", "fp16")
EXAMPLE_BATCH = 2  # > 1, so that the dynamic batch axis is traced and checked


@dataclass(frozen=True)
class ExportConfig:
    """How to export.

    precision: 'fp32', or 'fp16' for a half-precision renderer (see liveanim/export/precision.py).
    opset:     ONNX opset (>= 16 has GridSample; TensorRT 10 and ONNX Runtime take 18).
    verify:    check every graph with ONNX Runtime (CPU) against PyTorch fp32; raise if off.
    """

    precision: str = "fp32"
    opset: int = 18
    verify: bool = True


@dataclass(frozen=True)
class _Example:
    """Inputs for tracing and checking, and PyTorch fp32's outputs for them, per graph."""

    inputs: dict[str, tuple[torch.Tensor, ...]]
    outputs: dict[str, dict[str, torch.Tensor]]


def export_model(model: LIAX, out_dir: Path, config: ExportConfig = ExportConfig()) -> Manifest:
    """Write and check the export of `model` (fp32, on the CPU; it is not modified)."""
    weight = next(model.parameters())
    assert weight.device.type == "cpu" and weight.dtype == torch.float32, "export an fp32 CPU model"
    if config.precision not in EXPORT_PRECISIONS:
        raise ValueError(f"export precision must be one of {EXPORT_PRECISIONS}, not {config.precision!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until written again at the end
    started = time.perf_counter()
    example = _example(model, render=config.verify)
    specs = _specs(model, example)
    half = half_model(model) if config.precision == "fp16" else None
    graphs = {}
    for name in GRAPH_NAMES:
        precision = config.precision if name in HALF_GRAPHS else "fp32"
        source = half if precision == "fp16" else model
        graphs[name] = _export_one(source, specs[name], example, out_dir, precision, config)
    np.save(out_dir / DIRECTIONS_FILE, model.directions().detach().float().cpu().numpy())
    manifest = Manifest(model_sha256=state_dict_sha256(model.state_dict()), width=model.width,
                        latent_dim=model.latent_dim, motion_dim=model.motion_dim, precision=config.precision,
                        opset=config.opset, graphs=graphs, tools=tool_versions())
    manifest.write(out_dir)
    log.info("exported %s (%s) in %.0f s", out_dir, config.precision, time.perf_counter() - started)
    return manifest


def _export_one(model: LIAX, spec: GraphSpec, example: _Example, out_dir: Path, precision: str,
                config: ExportConfig) -> ExportedGraph:
    path = out_dir / spec.file
    log.info("exporting %s (%s) ...", spec.name, precision)
    export_graph(GRAPH_MODULES[spec.name](model), spec, example.inputs[spec.name], path, config.opset)
    errors = {}
    if config.verify:
        check_onnx(path)
        actual = run_onnx_cpu(path, spec, example.inputs[spec.name])
        errors = compare_outputs(spec.name, actual, example.outputs[spec.name], TOLERANCES[precision])
        log.info("%s matches PyTorch fp32; worst scaled errors: %s", spec.name, _worst(errors))
    return ExportedGraph(spec, files_sha256(graph_files(path)), precision, errors)


def _worst(errors: dict[str, dict[str, float]]) -> str:
    """The largest value of each metric over a graph's outputs, for the log."""
    worst: dict[str, float] = {}
    for metrics in errors.values():
        for key, value in metrics.items():
            worst[key] = max(worst.get(key, 0.0), value)
    return ", ".join(f"{key} {value:.1e}" for key, value in worst.items())


def _example(model: LIAX, render: bool) -> _Example:
    """A source, EXAMPLE_BATCH driving frames and the target latents they give, with fp32 outputs
    (the renderer's, the costly one, only if `render`).

    They are computed on a CUDA GPU where there is one (a copy of the model, TF32 off): the full
    model takes minutes per frame in PyTorch on a CPU.
    """
    images = smooth_images(1 + EXAMPLE_BATCH, seed=0)
    reference = copy.deepcopy(model).cuda() if torch.cuda.is_available() else model
    device = next(reference.parameters()).device
    with torch.inference_mode(), exact_fp32():
        source = reference.encode_source(images[:1].to(device))
        alpha = reference.encode_motion(images[1:].to(device))
        z_target = reference.target_latent(source, alpha, alpha[:1])
        rendered = {"image": _to_cpu(reference.decode(z_target, source.feats))} if render else {}
    feats = {name: _to_cpu(f) for name, f in zip(FEATURE_NAMES, source.feats)}
    return _Example(
        inputs={SOURCE_ENCODER: (images[:1].clone(),), MOTION_ENCODER: (images[1:].clone(),),
                RENDERER: (_to_cpu(z_target), *feats.values())},
        outputs={SOURCE_ENCODER: {"z": _to_cpu(source.z), "alpha": _to_cpu(source.alpha), **feats},
                 MOTION_ENCODER: {"alpha": _to_cpu(alpha)}, RENDERER: rendered},
    )


def _to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (not inference-mode) CPU copy, usable for tracing."""
    return tensor.detach().to("cpu", copy=True)


def _specs(model: LIAX, example: _Example) -> dict[str, GraphSpec]:
    feats = example.inputs[RENDERER][1:]
    return graph_specs(model.latent_dim, model.motion_dim, [tuple(f.shape[1:]) for f in feats])


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made the export (onnxruntime only if installed)."""
    import onnx
    import onnxscript

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__}
    try:
        import onnxruntime
    except ImportError:
        return versions
    return {**versions, "onnxruntime": onnxruntime.__version__}
