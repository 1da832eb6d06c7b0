"""`main.py animate`: a portrait driven by a video (the official LIA-X animation mode)."""

from __future__ import annotations

import argparse
from pathlib import Path

from liveanim.app.cli.options import add_offline_options, edit_from_args, existing_file, offline_config, open_animator
from liveanim.pipeline import offline


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "animate", help="animate a portrait with a driving video",
        description="Make the face in a portrait move like the face in a driving video. "
                    "The mp4 keeps the driving video's frame rate and sound.",
    )
    parser.add_argument("--source", type=existing_file, required=True, metavar="IMAGE", help="the portrait to animate")
    parser.add_argument("--driving", type=existing_file, required=True, metavar="VIDEO",
                        help="a video of one face; its head motion and expressions are copied")
    parser.add_argument("--out", type=Path, required=True, metavar="MP4", help="the video to write")
    add_offline_options(parser, video=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    edit = edit_from_args(args)
    offline.prepare_output(args.out, video=True, inputs=(args.source, args.driving))  # before the model loads
    with open_animator(args) as animator:
        offline.animate(animator, args.source, args.driving, args.out, edit, offline_config(args))
    return 0
