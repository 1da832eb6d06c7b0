"""torch -> ONNX for one graph: the dynamo exporter, constant folding, readable node names.

Why these steps:
- the dynamo exporter (`torch.export`) gives a clean graph (native GridSample, no custom ops,
  no Where/Equal shape noise that the TorchScript exporter leaves around every `expand`);
- its built-in optimizer does not fold large constants, so every equalized conv weight would
  stay `weight * scale` computed at run time; folding without a size limit turns them (and the
  demodulation energies, the identity grids) into initializers: constant conv weights that
  TensorRT and cuDNN want;
- each node is renamed `<module path>/<node>` (from the exporter's scope metadata), so that
  TensorRT layers can be matched to modules for precision constraints (liveanim/export/precision.py);
- weights go to one external-data file next to the graph: the released model (3.6 GB fp32)
  exceeds protobuf's 2 GB limit.
"""

from __future__ import annotations

import ast
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from liveanim.contract import BATCH, GraphSpec

log = logging.getLogger(__name__)

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
WRAPPER_PREFIX = "model."  # the graph modules hold the LIAX model as `self.model`
MAX_BATCH = 64  # the largest batch the exported graphs accept (engines may allow less)
NO_LIMIT = 2**62
# third-party loggers that report every folded constant at INFO (thousands of lines, slow)
CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx._internal.exporter._registration")


def export_graph(module: nn.Module, spec: GraphSpec, example: tuple[torch.Tensor, ...],
                 path: Path, opset: int) -> None:
    """Write `module` as the ONNX graph `spec` to `path` (+ `path.data`).

    example: one input tensor per `spec.inputs`; a dynamic `batch` axis needs an example batch > 1.
    """
    with _quiet(CHATTY_LOGGERS):
        program = torch.onnx.export(
            module.eval(), example, dynamo=True, opset_version=opset, optimize=False,
            input_names=spec.input_names, output_names=spec.output_names,
            dynamic_shapes=_dynamic_shapes(spec), verbose=False,
        )
        _fold_constants(program.model)
    _name_nodes_by_module(program.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, _data_path(path)):
        stale.unlink(missing_ok=True)
    program.save(path, external_data=True)
    log.info("wrote %s (%.1f MB)", path, sum(f.stat().st_size for f in graph_files(path)) / 1e6)


def graph_files(path: Path) -> list[Path]:
    """The files of one exported graph: the graph itself and its external weights (if any)."""
    data = _data_path(path)
    return [path, data] if data.is_file() else [path]


def _data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def _dynamic_shapes(spec: GraphSpec) -> tuple[dict[int, torch.export.Dim] | None, ...] | None:
    if not spec.dynamic_inputs:
        return None
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    return tuple({t.shape.index(BATCH): batch} if BATCH in t.shape else None for t in spec.inputs)


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Only errors from these loggers while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _fold_constants(model) -> None:
    """Fold every constant subexpression, however large (onnxscript's default stops at 8192 elements)."""
    import onnxscript.optimizer

    onnxscript.optimizer.optimize(model, input_size_limit=NO_LIMIT, output_size_limit=NO_LIMIT)


def _name_nodes_by_module(model) -> None:
    """Prefix each node name with the path of the module it came from, e.g. `dec.flow2.conv/node_conv2d_5`."""
    for node in model.graph:
        scope = module_path(node.metadata_props.get(SCOPE_KEY))
        if scope:
            node.name = f"{scope}/{node.name}"


def module_path(scopes: str | None) -> str:
    """The deepest module path in the exporter's scope list, relative to the LIAX model.

    "['', 'model.dec', 'model.dec.flow2', 'grid_sampler']" -> "dec.flow2" (the last entry is the op).
    """
    if not scopes:
        return ""
    names = ast.literal_eval(scopes)
    if len(names) < 2:
        return ""
    path = names[-2]
    return path[len(WRAPPER_PREFIX):] if path.startswith(WRAPPER_PREFIX) else path
