"""Soak test: run `main.py live` for a long time and show whether anything grows.

Makes a driving video (the astronaut photo on a canvas, the head turning and moving; or takes
--video), plays it looped in real time through `main.py live` exactly as a user runs it, with
--stats-every sampling the live process itself (resident memory, GPU memory, threads, FPS,
latency), and writes one JSON: the command, the machine, every sample, the system's load
average beside each (what else used the CPU), and a summary (growth per hour of memory and GPU
memory fitted after the warm-up, threads min/max, FPS min/median). The live process writes its
samples as it goes, so a run cut short still leaves them.

    python scripts/soak.py --minutes 60 --out docs/bench/soak_cpu.json -- --seeded 0.125 --device cpu
    python3 scripts/soak.py --minutes 10 --out $OUT/soak_h200.json -- --seeded 2.0 --precision fp16

Everything after `--` goes to `main.py live` (engine, model and output options).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from liveanim.pipeline.video import EncoderConfig, VideoWriter  # noqa: E402

WARM_UP_SHARE = 0.2  # samples of the first fifth of the run (compiling, caches filling) are not fitted


def main() -> int:
    args, live_options = _parse()
    with tempfile.TemporaryDirectory() as work:
        video = args.video or driving_video(Path(work) / "drive.mp4", args.size, args.fps)
        stats = Path(work) / "stats.json"
        command = [sys.executable, str(REPO / "main.py"), "live", "--video", str(video), "--loop", "--realtime",
                   "--duration", str(args.minutes * 60), "--stats-every", str(args.every), "--stats-json", str(stats),
                   *live_options]
        print("soak:", " ".join(command), flush=True)
        started = time.time()
        live = subprocess.Popen(command, cwd=REPO)
        load = _watch_load(live, args.every)
        report = json.loads(stats.read_text()) if stats.is_file() else {"samples": []}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "machine": {"system": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": command[1:],
        "minutes": args.minutes,
        "exit_code": live.returncode,
        "load_average_1min": load,
        "summary": summarize(report["samples"]),
        "live": report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("soak:", json.dumps(result["summary"]), f"-> {args.out}", flush=True)
    return live.returncode


def _parse() -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:]
    live_options = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long to stream")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    parser.add_argument("--video", type=Path, default=None, help="driving video (default: a synthetic one)")
    parser.add_argument("--size", default="1280x720", help="synthetic video size (default 1280x720)")
    parser.add_argument("--fps", type=int, default=30, help="synthetic video rate (default 30)")
    return parser.parse_args(own), live_options


def driving_video(path: Path, size: str, fps: int, seconds: int = 10) -> Path:
    """The astronaut on a canvas, the head turning and moving: a stand-in for a webcam."""
    width, height = (int(side) for side in size.lower().split("x"))
    side = min(width, height)
    photo = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width, 3), 40, dtype=np.uint8)
    left = (width - side) // 2
    canvas[:, left: left + side] = photo[:height]
    face = (left + 225 * side / 512, 115 * side / 512)
    with VideoWriter(path, fps, (width, height), config=EncoderConfig(preset="veryfast")) as out:
        for i in range(seconds * fps):
            t = i / fps
            matrix = cv2.getRotationMatrix2D(face, 10 * np.sin(2 * np.pi * 0.4 * t), 1.0)
            matrix[:, 2] += (0.035 * side * np.sin(2 * np.pi * 0.25 * t), 0.014 * side * np.sin(2 * np.pi * 0.3 * t))
            out.write(cv2.warpAffine(canvas, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE))
    return path


def _watch_load(live: subprocess.Popen, every_s: float) -> list[float]:
    """The 1-minute load average every `every_s` until the live process ends (whatever else ran)."""
    load = []
    while live.poll() is None:
        load.append(round(os.getloadavg()[0], 2))
        try:
            live.wait(every_s)
        except subprocess.TimeoutExpired:
            pass
    return load


def summarize(samples: list[dict]) -> dict:
    """Growth per hour (least squares, after the warm-up) of memory and GPU memory; threads and FPS ranges."""
    settled = samples[int(len(samples) * WARM_UP_SHARE):]
    summary: dict = {"samples": len(samples)}
    for key in ("rss_mb", "gpu_allocated_mb", "gpu_reserved_mb"):
        points = [(s["t_s"], s[key]) for s in settled if s.get(key) is not None]
        if len(points) >= 2:
            t, value = np.array(points, dtype=float).T
            summary[f"{key}_first"], summary[f"{key}_last"] = value[0], value[-1]
            summary[f"{key}_growth_per_hour"] = float(np.polyfit(t / 3600, value, 1)[0])
    for key in ("threads", "python_threads"):
        values = [s[key] for s in samples if s.get(key) is not None]
        if values:
            summary[f"{key}_min"], summary[f"{key}_max"] = min(values), max(values)
    fps = [s["fps"] for s in settled]
    if fps:
        summary["fps_min"], summary["fps_median"] = min(fps), statistics.median(fps)
        summary["latency_ms_p95_max"] = max(s["latency_ms_p95"] for s in settled)
    return summary


if __name__ == "__main__":
    sys.exit(main())
