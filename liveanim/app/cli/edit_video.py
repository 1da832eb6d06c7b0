"""`main.py edit-video`: the person in a video changed by the dials (official LIA-X video editing)."""

from __future__ import annotations

import argparse
from pathlib import Path

from liveanim.app.cli.options import (
    add_offline_options,
    edit_from_args,
    existing_file,
    offline_config,
    open_animator,
)
from liveanim.pipeline import offline


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "edit-video", help="change the pose and expression of the person in a video",
        description="Edit the first frame of a video with the dials and let it move as the video does. "
                    "The mp4 keeps the video's frame rate and sound.",
    )
    parser.add_argument("--video", type=existing_file, required=True, metavar="VIDEO", help="a video of one face")
    parser.add_argument("--out", type=Path, required=True, metavar="MP4", help="the video to write")
    add_offline_options(parser, video=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    edit = edit_from_args(args)
    offline.prepare_output(args.out, video=True, inputs=(args.video,))  # before the model loads
    with open_animator(args) as animator:
        offline.edit_video(animator, args.video, args.out, edit, offline_config(args))
    return 0
