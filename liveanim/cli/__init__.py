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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"liveanim.cli.{name}").register(subparsers)
    for name in FACE_COMMANDS:  # also after the command, where the other options go
        add_face_model_option(subparsers.choices[name], default=argparse.SUPPRESS)
    return parser


def add_face_model_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--face-model", type=Path, default=default, metavar="PATH",
                        help=f"a local face_landmarker.task (default: ${FACE_MODEL_ENV}, else the one "
                             "downloaded once into the cache)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.face_model is not None:  # read wherever a face detector starts, in any thread
        os.environ[FACE_MODEL_ENV] = str(args.face_model.expanduser().resolve())
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        from ui.app import run_app

        return run_app()
    try:
        return args.run(args)
    except LiveAnimError as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
