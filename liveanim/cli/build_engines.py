"""`python main.py build-engines`: export and build the fast engines now, not on the first run.

TensorRT engines take minutes to build and only run on the GPU and TensorRT version they were
built with; this command builds them (or finds them up to date) and reports what it did. For the
torch engine it compiles the per-frame graphs into Inductor's cache (minutes on a new GPU or
PyTorch), so that the first live start afterwards takes seconds.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from engines import FEATURE_NAMES, Engine, create_engine
from export.graphs import smooth_images
from liveanim.cli.export import add_weights_options, weights_config

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-engines", help="export the model and build the TensorRT / ONNX Runtime engines, or compile torch's",
        description="Export the model (if needed) and build the engine for this GPU, so that the app starts fast.")
    add_weights_options(parser)
    parser.add_argument("--engine", default="tensorrt",
                        choices=["auto", "tensorrt", "onnxruntime", "onnxruntime:tensorrt", "onnxruntime:cuda", "torch"],
                        help="which engine to build (default tensorrt; torch: compile its graphs for this GPU)")
    parser.add_argument("--precision", action="append", choices=["fp32", "fp16"], default=None,
                        help="repeatable (default: fp16 and fp32)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="default: the GPU")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for precision in args.precision or ["fp16", "fp32"]:
        config = weights_config(args, backend=args.engine, device=args.device, precision=precision)
        started = time.perf_counter()
        engine = create_engine(config)
        try:
            _first_frame(engine)  # ONNX Runtime's TensorRT provider builds on the first run
            log.info("ready: %s (%.0f s)", engine.describe(), time.perf_counter() - started)
        finally:
            engine.close()
    return 0


def _first_frame(engine: Engine) -> None:
    """One source encoding, motion encoding and render, at the engine's batch of one."""
    image = smooth_images(1, seed=0).to(engine.device)
    source = engine.encode_source({"image": image})
    alpha = engine.encode_motion({"image": image})["alpha"]
    z_target = engine.target_latent(source["z"], alpha)
    engine.render({"z_target": z_target, **{name: source[name] for name in FEATURE_NAMES}})
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
