"""`python main.py <command>`: one module per command, each with `register(subparsers)`.

A command module adds its parser and sets `run=function(args) -> int` on it. Errors of type
`LiveAnimError` are printed as one actionable line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from liveanim.errors import LiveAnimError
from liveanim.face.model import FACE_MODEL_ENV

FACE_COMMANDS = ("animate", "edit-image", "edit-video", "manipulate", "live")  # the ones that find faces
COMMANDS = ("weights", "animate", "edit_image", "edit_video", "manipulate", "live", "devices", "export", "build_engines", "bench")

log = logging.getLogger("liveanim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="LiveAnim: drive a portrait with your face (LIA-X). Without a command the desktop app starts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_face_model_option(parser, default=None)
    parser.add_argument("--weights", dest="app_weights", type=Path, default=None, metavar="PATH",
                        help="local lia-x.pt or .safetensors for the desktop app (remembered, as when chosen with "
                             "File > Get the LIA-X weights...), or for the command that follows")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"liveanim.app.cli.{name}").register(subparsers)
    for name in FACE_COMMANDS:  # also after the command, where the other options go
        add_face_model_option(subparsers.choices[name], default=argparse.SUPPRESS)
    return parser


def add_face_model_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--face-model", type=Path, default=default, metavar="PATH",
                        help=f"a local face_landmarker.task (default: ${FACE_MODEL_ENV}, else the one "
                             "downloaded once into the cache)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _carry_weights(parser, args)
    if args.face_model is not None:  # read wherever a face detector starts, in any thread
        os.environ[FACE_MODEL_ENV] = str(args.face_model.expanduser().resolve())
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        from liveanim.app.ui.app import run_app

        return run_app(weights=args.app_weights)
    try:
        return args.run(args)
    except LiveAnimError as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130


def _carry_weights(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`main.py --weights PATH COMMAND ...` gives the command that --weights, as if after it."""
    if args.app_weights is None or args.command is None:
        return
    if not hasattr(args, "weights"):
        parser.error(f"{args.command} takes no --weights")
    if args.weights is not None and args.weights != args.app_weights:
        parser.error(f"--weights was given twice, as {args.app_weights} and {args.weights}")
    args.weights = args.app_weights


if __name__ == "__main__":
    sys.exit(main())
