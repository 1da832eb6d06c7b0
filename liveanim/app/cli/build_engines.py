"""`python main.py build-engines`: export and build the fast engines now, not on the first run.

By default it prepares the engine `auto` picks on this machine. TensorRT engines take minutes to
build and only run on the GPU and TensorRT version they were built with; TensorRT for RTX engines
run on every GPU of the compute capabilities they were built for, and `--gpu-target` builds them
for GPUs this machine does not have (no GPU is needed for that). For the torch engine it compiles
the per-frame graphs and saves them in the engine cache (minutes on a new GPU or PyTorch), so that
the first live start afterwards loads them in seconds.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from liveanim.app.cli.export import add_weights_options, weights_config
from liveanim.engines import DEVICES, ENGINE_CHOICES, EngineConfig, build_for_targets, create_engine
from liveanim.engines.onnxruntime_engine import GPU_PROVIDERS
from liveanim.errors import EngineError
from liveanim.export import EXPORT_PRECISIONS

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-engines", help="export the model and build the TensorRT / ONNX Runtime engines, or compile torch's",
        description="Export the model (if needed) and build the engine for this GPU, so that the app starts fast.")
    add_weights_options(parser)
    parser.add_argument("--engine", default=EngineConfig.backend,
                        choices=[*ENGINE_CHOICES, *(f"onnxruntime:{provider}" for provider in GPU_PROVIDERS)],
                        help="which engine to build (default: the one auto picks here; torch: compile its graphs "
                             "for this GPU)")
    parser.add_argument("--precision", action="append", choices=EXPORT_PRECISIONS, default=None,
                        help="repeatable (default: fp16 and fp32 on an NVIDIA GPU, fp32 elsewhere)")
    parser.add_argument("--device", default=EngineConfig.device, choices=[d for d in DEVICES if d != "mps"],
                        help="default: the GPU")
    parser.add_argument("--gpu-target", action="append", default=[], metavar="CC",
                        help="tensorrt-rtx: build, without running them, engines for GPUs of this compute capability "
                             "(repeatable: 8.0, 8.6, 8.9, 12.0, 12.1; one engine serves all those given); "
                             "no GPU is needed")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    default = ["fp16", "fp32"] if torch.cuda.is_available() and args.device != "cpu" else ["fp32"]
    for precision in args.precision or default:
        # the torch engine compiles as a live start does: its graphs (the renderer's parts) in child processes at once
        config = weights_config(args, backend=args.engine, device=args.device, precision=precision,
                                compile_in_background=True)
        started = time.perf_counter()
        if args.gpu_target:
            files = build_for_targets(config, tuple(args.gpu_target))
            log.info("ready for compute capability %s: %s (%.0f s)", ", ".join(args.gpu_target),
                     ", ".join(f"{path.name} {path.stat().st_size / 1e6:.1f} MB" for path in files.values()),
                     time.perf_counter() - started)
            continue
        engine = create_engine(config)
        try:
            engine.prepare()  # ONNX Runtime's TensorRT provider builds at its first run
            engine.wait_until_compiled()
            progress = engine.optimizing()
            if progress is not None and progress.failed:
                raise EngineError(f"{progress.failed} of the {progress.graphs} compiled graphs of {engine.describe()} "
                                  "could not be built (the log above says why); they would run uncompiled (slower).")
            log.info("ready: %s (%.0f s)", engine.describe(), time.perf_counter() - started)
        finally:
            engine.close()
    return 0
