"""`python main.py export`: write the ONNX graphs that ONNX Runtime and TensorRT engines run.

By default the export goes where the engines look for it (the cache folder), so that a later
`--engine onnxruntime` or `tensorrt` run starts without exporting.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from liveanim.engines import EngineConfig, export_folder
from liveanim.engines.loading import load_model
from liveanim.export import EXPORT_PRECISIONS, ExportConfig, export_model

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export the model to ONNX (static 512x512 graphs + manifest)",
        description="Export LIA-X to source_encoder.onnx, motion_encoder.onnx and renderer.onnx (external "
                    "weights), directions.npy and manifest.json, then check them with ONNX Runtime against PyTorch.")
    add_weights_options(parser)
    parser.add_argument("--precision", default=ExportConfig.precision, choices=EXPORT_PRECISIONS,
                        help="fp16: half-precision renderer, flows and encoders in fp32 (default fp32)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default: the engines' cache folder for these weights)")
    parser.set_defaults(run=run)


def add_weights_options(parser: argparse.ArgumentParser) -> None:
    """--weights PATH | --seeded WIDTH, and --cache-dir."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, default=None,
                        help="local lia-x.pt or .safetensors (default: the released weights, downloaded once)")
    source.add_argument("--seeded", type=float, default=None, metavar="WIDTH",
                        help="seeded random weights of this width (2.0 = released size) instead of a checkpoint")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help="where exports and engines are kept (default: LiveAnim's cache folder)")


def weights_config(args: argparse.Namespace, **fields) -> EngineConfig:
    """The EngineConfig of --weights / --seeded / --cache-dir, plus `fields`."""
    seeded = args.seeded is not None
    return EngineConfig(weights=args.weights, seeded=seeded, width=args.seeded if seeded else EngineConfig.width,
                        cache_dir=args.cache_dir, **fields)


def run(args: argparse.Namespace) -> int:
    config = weights_config(args)
    out = args.out or export_folder(config, args.precision)
    manifest = export_model(load_model(config), out, ExportConfig(precision=args.precision))
    for name, graph in manifest.graphs.items():
        log.info("%s: %s -> %s (%s)", graph.spec.file, graph.spec.input_names, graph.spec.output_names,
                 graph.precision)
    log.info("export of model %s… (width %s, opset %d) in %s", manifest.model_sha256[:12], manifest.width,
             manifest.opset, out)
    return 0
