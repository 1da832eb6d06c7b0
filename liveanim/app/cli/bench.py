"""`python main.py bench`: latency per stage, FPS and memory of every backend and precision.

    python main.py bench --seeded 2.0 --frames 200 --json bench.json
    python main.py bench --engines torch,tensorrt --precisions fp16 --accuracy
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from liveanim.app.cli.export import add_weights_options, weights_config
from liveanim.engines import DEVICES, EngineConfig
from liveanim.engines.bench import BenchConfig, format_table, run_bench
from liveanim.engines.devices import resolve_device
from liveanim.engines.loading import load_model
from liveanim.errors import UsageError

log = logging.getLogger(__name__)

BENCH_WIDTH = EngineConfig.width  # seeded weights of the released size when no checkpoint is given


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark and check the accuracy of every engine",
        description="Per-stage latency (median, p95), FPS and GPU memory of each engine and precision on the "
                    "same inputs; --accuracy compares each with PyTorch fp32. Without --weights it uses seeded "
                    f"weights of width {BENCH_WIDTH} (the released size): speed does not depend on the values.")
    add_weights_options(parser)
    parser.add_argument("--engines", default="", metavar="LIST",
                        help="comma-separated: torch, torch+graphs, torch+compile, torch+compile+graphs, onnxruntime, "
                             "onnxruntime:cpu|cuda|tensorrt, tensorrt, tensorrt-rtx (default: all for the device)")
    parser.add_argument("--precisions", default=",".join(BenchConfig.precisions), metavar="LIST",
                        help=f"comma-separated (default {','.join(BenchConfig.precisions)})")
    parser.add_argument("--frames", type=int, default=BenchConfig.frames, help="timed frames per case")
    parser.add_argument("--warmup", type=int, default=BenchConfig.warmup, help="untimed frames first")
    parser.add_argument("--accuracy", action="store_true", help="also compare every case with PyTorch fp32")
    parser.add_argument("--device", default=EngineConfig.device, choices=DEVICES)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0:
        raise UsageError("--frames must be 1 or more and --warmup 0 or more")
    if args.weights is None and args.seeded is None:
        args.seeded = BENCH_WIDTH
    config = weights_config(args, device=args.device)
    bench = BenchConfig(engines=_items(args.engines), precisions=_items(args.precisions),
                        frames=args.frames, warmup=args.warmup, accuracy=args.accuracy)
    log.info("benchmarking on %s", resolve_device(args.device))
    report = run_bench(config, bench, load_model(config))
    log.info("\n%s", format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log.info("wrote %s", args.json)
    return 0


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())
