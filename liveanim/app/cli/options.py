"""Options shared by several commands, defined once so their defaults cannot drift."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from liveanim.engines import DEVICES, ENGINE_CHOICES, PRECISIONS, EngineConfig, create_engine
from liveanim.errors import UsageError
from liveanim.motion.dials import DIALS, direction_index, edit_vector, parse_assignments
from liveanim.motion.limits import LIMITS
from liveanim.pipeline.animator import Animator
from liveanim.pipeline.offline import OfflineConfig


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """--weights, --engine, --device, --precision, --compile, --cuda-graphs, --seeded."""
    group = parser.add_argument_group("model and engine")
    group.add_argument("--weights", type=Path, default=None,
                       help="local lia-x.pt or .safetensors (default: download once into the cache)")
    group.add_argument("--engine", default=EngineConfig.backend, choices=ENGINE_CHOICES,
                       help="inference backend (default: the fastest this machine has)")
    group.add_argument("--device", default=EngineConfig.device, choices=DEVICES,
                       help="compute device (default: CUDA, then MPS, then CPU)")
    group.add_argument("--precision", default=EngineConfig.precision, choices=PRECISIONS,
                       help="fp16 needs a GPU; bf16 a GPU or a CPU with bf16 instructions (AVX512-BF16, AMX), "
                            "where it takes half the time (default: fp16 on CUDA, fp32 elsewhere)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch: compile the per-frame graphs (default: on with CUDA and Triton, 3x faster; "
                            "the first start compiles for a few minutes, later starts reuse the compiled code)")
    group.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                       help="torch: replay the per-frame graphs as CUDA graphs (default: on with CUDA)")
    group.add_argument("--seeded", type=float, default=None, metavar="WIDTH",
                       help="use seeded random weights of this width instead of a checkpoint (tests, benchmarks)")


def engine_config(args: argparse.Namespace, compile_in_background: bool = False) -> EngineConfig:
    return EngineConfig(backend=args.engine, device=args.device, precision=args.precision,
                        weights=args.weights, seeded=args.seeded is not None,
                        width=args.seeded if args.seeded is not None else EngineConfig.width,
                        compile=args.compile, cuda_graphs=args.cuda_graphs,
                        compile_in_background=compile_in_background)


def add_edit_options(parser: argparse.ArgumentParser) -> None:
    """--dial name=value and --direction index=value, repeatable."""
    names = ", ".join(d.name for d in DIALS)
    parser.add_argument("--dial", action="append", default=[], metavar="NAME=VALUE",
                        help=f"offset a labelled direction, {LIMITS.offset} (useful about -0.4..0.4); names: {names}")
    parser.add_argument("--direction", action="append", default=[], metavar="INDEX=VALUE",
                        help=f"offset a raw dictionary direction 0..39, {LIMITS.offset}")


def edit_from_args(args: argparse.Namespace) -> np.ndarray:
    """The (40,) edit vector of --dial and --direction; a bad item is a UsageError naming it."""
    try:
        return edit_vector(parse_assignments(args.dial), parse_assignments(args.direction, direction_index))
    except ValueError as error:
        raise UsageError(str(error)) from None


def add_offline_options(parser: argparse.ArgumentParser, video: bool) -> None:
    """--no-crop, --size, the dials and the engine options; for video outputs also --chunk."""
    parser.add_argument("--no-crop", dest="crop", action="store_false",
                        help="the inputs are already face crops: only resize them to 512x512")
    parser.add_argument("--size", type=even_size if video else positive_int, default=OfflineConfig.size,
                        metavar="PIXELS", help=f"side of the square output (default: {OfflineConfig.size})")
    if video:
        parser.add_argument("--chunk", type=positive_int, default=OfflineConfig.chunk, metavar="FRAMES",
                            help=f"frames per model batch; more is faster on a GPU and needs more memory (the "
                                 f"torch engine on the CPU runs them one by one; default: {OfflineConfig.chunk})")
    add_edit_options(parser)
    add_engine_options(parser)


def offline_config(args: argparse.Namespace) -> OfflineConfig:
    """The options of `add_offline_options`; progress bars only on a terminal."""
    return OfflineConfig(crop=args.crop, chunk=getattr(args, "chunk", OfflineConfig.chunk), size=args.size,
                         progress=sys.stderr.isatty())


@contextlib.contextmanager
def open_animator(args: argparse.Namespace, live: bool = False) -> Iterator[Animator]:
    """The animator over the engine the options ask for, released afterwards.

    live: frames from the start, at reduced speed until the compiled graphs are ready; files
          (the other commands) rather wait for them and then run at full speed throughout.
    """
    engine = create_engine(engine_config(args, compile_in_background=live))
    try:
        yield Animator(engine)
    finally:
        engine.close()


def existing_file(value: str) -> Path:
    """An input path, checked when the command line is parsed, before the model loads."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {path}")
    return path


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def even_size(value: str) -> int:
    """A video side: H.264 in yuv420p needs even sizes."""
    number = positive_int(value)
    if number % 2:
        raise argparse.ArgumentTypeError(f"must be even for video (H.264), got {number}; try {number + 1}")
    return number
