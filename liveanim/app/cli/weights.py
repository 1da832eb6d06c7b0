"""`python main.py weights`: fetch the released weights once and check that they load."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from liveanim.model import LIAX
from liveanim.weights import resolve_weights

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights", help="download lia-x.pt (3.6 GB, once) and check it",
        description="Download the released LIA-X weights into the cache (resumable), or check a local "
                    "file given with --weights, and prepare the fast-loading safetensors copy.")
    parser.add_argument("--weights", type=Path, default=None, help="a local lia-x.pt to check instead")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = LIAX.from_checkpoint(resolve_weights(args.weights, download=True))
    params = sum(p.numel() for p in model.parameters())
    log.info("weights OK: LIA-X width %s, motion_dim %d, %.1f M parameters", model.width, model.motion_dim, params / 1e6)
    return 0
