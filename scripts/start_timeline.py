"""The live loop's first minutes on a fresh machine, at the engine: the frame rate while the torch
engine compiles its graphs in the background, with and without the child process that compiles
them outside the live process (engines/torch_engine/prefill.py).

    PREFILL=1 python3 scripts/start_timeline.py    # compiled in a child process (the default)
    PREFILL=0 python3 scripts/start_timeline.py    # compiled in the live process, as before
    PREPARE=1 SETUP_S=30 python3 scripts/start_timeline.py   # the window's start: the engine
                                                  # prepared as it is built, the stream 30 s later

The engine starts as `live` starts it (torch backend, compiled in the background, CUDA graphs,
fp16; seeded weights, or the checkpoint WEIGHTS names). One source is encoded; then each frame is
a motion encoding and a render at batch 1 (Animator.motion, Animator.render; live runs the two on
two threads, here they run one after the other), until the graphs have run compiled for 10 s or
BUDGET_S has passed. The frame rate is counted in one-second windows from the end of the first
frame.

Environment: OUT (results; default out/start-timeline), WIDTH (2.0, seeded weights), WEIGHTS (a
checkpoint to load instead of seeded weights), BUDGET_S (420), PREFILL (1),
HANDOFFS (1; 0: Python's lock handed over at its default interval while a graph loads),
PREPARE (0: as `live` starts; 1: as the window starts, `Engine.prepare` as the engine is built),
SETUP_S (0; seconds between the engine's preparation and the stream's start: a user setting up),
DEVICE (cuda; cpu for a smoke test, in fp32 without CUDA graphs), PARTS ('stages': the renderer
compiled in parts, one per decoder stage, on CUDA; 'whole': as one graph; default the engine's,
backend.RENDER_IN_PARTS), CACHE (Inductor's and the
engine's caches; default a new empty folder, removed afterwards: a first start; the same folder
twice: a later start).
Writes $OUT/start-timeline-prefill-{on,off}.json and logs to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(os.environ.get("OUT", "out/start-timeline"))
WIDTH = float(os.environ.get("WIDTH", "2.0"))
WEIGHTS = Path(os.environ["WEIGHTS"]) if os.environ.get("WEIGHTS") else None
BUDGET_S = float(os.environ.get("BUDGET_S", "420"))
PREFILL = os.environ.get("PREFILL", "1") != "0"
PREPARE = os.environ.get("PREPARE", "0") != "0"
SETUP_S = float(os.environ.get("SETUP_S", "0"))
HANDOFFS = os.environ.get("HANDOFFS", "1") != "0"
DEVICE = os.environ.get("DEVICE", "cuda")
PARTS = os.environ.get("PARTS", "")
TEMPORARY = not os.environ.get("CACHE")  # a new folder, removed afterwards
CACHE = Path(tempfile.mkdtemp(prefix="start-timeline-") if TEMPORARY else os.environ["CACHE"])
FRESH = not CACHE.is_dir() or not any(CACHE.iterdir())  # nothing compiled yet: a first start
SETTLED_S = 10.0  # compiled for this long: full speed reached
JOBS = 2  # compile jobs of a live start: the motion encoder and the renderer at batch 1, a graph or more each
# before torch is imported: every compiled artefact of this run goes to (or comes from) CACHE
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(CACHE / "inductor")
os.environ["TRITON_CACHE_DIR"] = str(CACHE / "triton")

import numpy as np  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("start_timeline")


class _Records(logging.Handler):
    """The engine's log lines (the child's start and end, warnings), with their time since the start."""

    def __init__(self, t0: float) -> None:
        super().__init__(logging.INFO)
        self.t0 = t0
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.monotonic() - self.t0:7.1f} s {record.levelname} {record.getMessage()}")


def run() -> dict[str, Any]:
    from liveanim.engines import EngineConfig, create_engine
    from liveanim.engines.torch_engine import backend, compiler, prefill
    from liveanim.pipeline.animator import Animator
    from torch._dynamo.utils import counters

    prefill.IN_CHILD = PREFILL
    if PARTS:
        backend.RENDER_IN_PARTS = PARTS == "stages"
    if not HANDOFFS:
        compiler.HANDOFF_S = sys.getswitchinterval()
    cuda = DEVICE == "cuda"
    config = EngineConfig(backend="torch", device=DEVICE, precision="fp16" if cuda else "fp32",
                          seeded=WEIGHTS is None, weights=WEIGHTS, width=WIDTH, compile=True, cuda_graphs=cuda,
                          compile_in_background=True, cache_dir=CACHE / "engine")
    t0 = time.monotonic()
    records = _Records(t0)
    logging.getLogger("liveanim").addHandler(records)
    engine = create_engine(config)
    ready_s = time.monotonic() - t0
    if PREPARE:
        engine.prepare()
    prepared_s = time.monotonic() - t0
    time.sleep(SETUP_S)  # no frames: the children and the compiler thread go on
    stream_s = time.monotonic() - t0
    engine_width = engine.model.width
    animator = Animator(engine)
    rng = np.random.default_rng(0)
    avatar = animator.encode_avatar(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    driving = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    base = animator.motion(driving)
    frames: list[tuple[float, float, bool]] = []  # (end since t0, seconds, compiled before it began)
    images: dict[bool, np.ndarray] = {}  # the last frame of each kind: the same inputs every frame
    used_peak = 0
    compiled_at: float | None = None
    try:
        while time.monotonic() - t0 < BUDGET_S:
            progress = engine.optimizing()
            compiled = progress.graphs >= JOBS and engine.wait_until_compiled(0)
            if compiled and compiled_at is None:
                compiled_at = time.monotonic() - t0
            if compiled_at is not None and time.monotonic() - t0 - compiled_at >= SETTLED_S:
                break
            started = time.monotonic()
            image = animator.render(avatar, animator.motion(driving) - base)
            images[compiled] = np.asarray(image.cpu())  # the frame is shown: wait for it
            frames.append((time.monotonic() - t0, time.monotonic() - started, compiled))
            if cuda and len(frames) % 10 == 0:
                free, total = torch.cuda.mem_get_info()
                used_peak = max(used_peak, total - free)  # the child's memory included
    finally:
        progress = engine.optimizing()
        engine.close()
        logging.getLogger("liveanim").removeHandler(records)
    report = _summary(frames, ready_s, compiled_at)
    report.update(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if cuda else None, device=DEVICE, width=engine_width,
        weights=str(WEIGHTS) if WEIGHTS else "seeded",
        precision=config.precision, render_parts=backend.render_parts(engine.device), prefill_in_child=PREFILL,
        quick_handoffs=HANDOFFS, budget_s=BUDGET_S,
        prepared=PREPARE, time_to_prepared_s=prepared_s, setup_s=SETUP_S, stream_start_s=stream_s,
        fresh_cache=FRESH,
        gpu_memory_peak_gib={"this_process": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                             "device_used_sampled": used_peak / 2**30 if cuda else None},
        inductor_cache={name: counters["inductor"][name] for name in ("fxgraph_cache_hit", "fxgraph_cache_miss")},
        compiled_vs_uncompiled_max_abs=(float(np.abs(images[True].astype(np.float64) - images[False]).max())
                                        if len(images) == 2 else None),
        graphs={"asked": progress.graphs, "finished": progress.finished, "failed": progress.failed},
        engine_log=records.lines)
    return report


def _summary(frames: list[tuple[float, float, bool]], ready_s: float, compiled_at: float | None) -> dict[str, Any]:
    """Times to the first frame and to full speed, FPS per second, frame times during and after compiling."""
    if not frames:
        return {"time_to_engine_ready_s": ready_s, "frames": 0}
    first_end = frames[0][0]
    # one-second windows from the first frame's end: a first frame that waits for its graphs is
    # the first frame's time, not seconds without frames after it
    windows = [0] * (int(frames[-1][0] - first_end) + 1)
    for end, _, _ in frames[1:]:
        windows[int(end - first_end)] += 1
    full = windows[:-1] or windows  # the last window is cut short

    def percentiles(ms: list[float]) -> dict[str, float] | None:
        return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "n": len(ms)} if ms else None

    return {"time_to_engine_ready_s": ready_s, "first_frame_s": first_end, "time_to_full_speed_s": compiled_at,
            "frames": len(frames), "fps_per_second": windows, "min_fps_after_first_frame": min(full),
            "frame_ms_while_compiling": percentiles([s * 1e3 for _, s, done in frames[1:] if not done]),
            "frame_ms_compiled": percentiles([s * 1e3 for _, s, done in frames if done])}


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        log.error("no CUDA GPU here: run with DEVICE=cpu for a smoke test")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        report = run()
    finally:
        if TEMPORARY:
            shutil.rmtree(CACHE, ignore_errors=True)
    path = OUT / f"start-timeline-prefill-{'on' if PREFILL else 'off'}.json"
    path.write_text(json.dumps(report, indent=2))
    log.info("wrote %s: first frame at %.1f s, full speed at %s s, min %s FPS", path, report.get("first_frame_s", -1),
             report.get("time_to_full_speed_s"), report.get("min_fps_after_first_frame"))
    return 0


if __name__ == "__main__":
    status = main()
    # A compile that BUDGET_S cut short may still run inside Inductor on the engine's daemon thread;
    # the interpreter's shutdown under it aborts the process (seen: SIGABRT on a CPU, SIGSEGV on the
    # H200). The report is written and the child ended by engine.close(): leave without that shutdown.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)
