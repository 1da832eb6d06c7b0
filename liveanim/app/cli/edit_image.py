"""`main.py edit-image`: a portrait changed by the dials (the official LIA-X image editing)."""

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
        "edit-image", help="change a portrait's pose and expression with the dials",
        description="Turn the head, open the mouth, close the eyes... of a portrait, "
                    "by offsetting LIA-X's motion directions (--dial, --direction).",
    )
    parser.add_argument("--source", type=existing_file, required=True, metavar="IMAGE", help="the portrait to edit")
    parser.add_argument("--out", type=Path, required=True, metavar="IMAGE",
                        help="the image to write (.png, .jpg or .webp)")
    add_offline_options(parser, video=False)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    edit = edit_from_args(args)
    offline.prepare_output(args.out, video=False, inputs=(args.source,))  # before the model loads
    with open_animator(args) as animator:
        offline.edit_image(animator, args.source, args.out, edit, offline_config(args))
    return 0
