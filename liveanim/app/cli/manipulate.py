"""`main.py manipulate`: a clip sweeping the dials back and forth (official linear manipulation)."""

from __future__ import annotations

import argparse
from pathlib import Path

from liveanim.app.cli.options import (
    add_offline_options,
    edit_from_args,
    existing_file,
    offline_config,
    open_animator,
    positive_int,
)
from liveanim.errors import UsageError
from liveanim.pipeline import offline
from liveanim.pipeline.offline import Sweep


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "manipulate", help="a clip of a portrait moving along the dials and back",
        description="Render a portrait while the given --dial/--direction offsets go from 0 to their "
                    "values, back to 0, to their opposites and back to 0: a way to see what a direction does.",
    )
    parser.add_argument("--source", type=existing_file, required=True, metavar="IMAGE", help="the portrait")
    parser.add_argument("--out", type=Path, required=True, metavar="MP4", help="the video to write")
    parser.add_argument("--steps", type=positive_int, default=Sweep.steps, metavar="FRAMES",
                        help=f"frames per quarter of the sweep (default: {Sweep.steps})")
    parser.add_argument("--fps", type=positive_fps, default=Sweep.fps,
                        help=f"frame rate of the clip (default: {Sweep.fps:g})")
    add_offline_options(parser, video=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    edit = edit_from_args(args)
    if not edit.any():
        raise UsageError("manipulate needs something to sweep: give at least one nonzero --dial or --direction, "
                         "e.g. --dial yaw1=0.3")
    offline.prepare_output(args.out, video=True, inputs=(args.source,))  # before the model loads
    with open_animator(args) as animator:
        offline.manipulate(animator, args.source, args.out, edit, offline_config(args), Sweep(args.steps, args.fps))
    return 0


def positive_fps(value: str) -> float:
    fps = float(value)
    if not fps > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return fps
