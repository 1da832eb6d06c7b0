"""Options shared by several commands, defined once so their defaults cannot drift."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engines import EngineConfig
from liveanim.errors import UsageError
from liveanim.motion.dials import DIALS, edit_vector, parse_assignments


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """--weights, --engine, --device, --precision, --seeded."""
    group = parser.add_argument_group("model and engine")
    group.add_argument("--weights", type=Path, default=None,
                       help="local lia-x.pt or .safetensors (default: download once into the cache)")
    group.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                       help="inference backend (default: the fastest this machine has)")
    group.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu", "mps"],
                       help="compute device (default: CUDA, then MPS, then CPU)")
    group.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                       help="fp16/bf16 need a GPU")
    group.add_argument("--seeded", type=float, default=None, metavar="WIDTH",
                       help="use seeded random weights of this width instead of a checkpoint (tests, benchmarks)")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(backend=args.engine, device=args.device, precision=args.precision,
                        weights=args.weights, seeded=args.seeded is not None,
                        width=args.seeded if args.seeded is not None else 2.0)


def add_edit_options(parser: argparse.ArgumentParser) -> None:
    """--dial name=value and --direction index=value, repeatable."""
    names = ", ".join(d.name for d in DIALS)
    parser.add_argument("--dial", action="append", default=[], metavar="NAME=VALUE",
                        help=f"offset a labelled direction; names: {names} (useful range about -0.4..0.4)")
    parser.add_argument("--direction", action="append", default=[], metavar="INDEX=VALUE",
                        help="offset a raw dictionary direction 0..39")


def edit_from_args(args: argparse.Namespace) -> np.ndarray:
    """The (40,) edit vector of --dial and --direction; a bad item is a UsageError naming it."""
    try:
        return edit_vector(parse_assignments(args.dial), parse_assignments(args.direction, int))
    except ValueError as error:
        raise UsageError(str(error)) from None
