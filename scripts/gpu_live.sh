#!/usr/bin/env bash
# The live loop on a GPU: the full-width LIA-X (seeded random weights: speed does not depend on
# the values) driven by a synthetic 1280x720 video played in real time at 30 and at 60 fps,
# through `main.py live` exactly as a user runs it (capture, tracking, motion, render, paste-back
# into a 1280x720 output; no virtual camera, which a server does not have).
#
# Reports per run: sustained output fps (the last 120 frames), dropped frames, capture-to-output
# latency p50/p95, per-stage ms and peak GPU memory, merged into $OUT/gpu_live.json.
#
# Needs no network. Without mediapipe the runs use a fixed centre crop (--no-track) and an
# uncropped avatar (--no-crop); the JSON and the last line say so.
#
# Environment: OUT (default ./out), PYTHON (default python3), PRECISIONS (default "fp16 fp32"),
#              FRAMES (frames delivered per run, default 360), ENGINE (default auto = fastest present),
#              ENGINE_FLAGS (default "--compile --cuda-graphs": the fastest torch path).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-out}"
PYTHON="${PYTHON:-python3}"
PRECISIONS="${PRECISIONS:-fp16 fp32}"
FRAMES="${FRAMES:-360}"
ENGINE="${ENGINE:-auto}"
ENGINE_FLAGS="${ENGINE_FLAGS---compile --cuda-graphs}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to PyTorch')"

if "$PYTHON" -c "import mediapipe" 2>/dev/null; then
    TRACK_FLAGS=()
    TRACKING_NOTE="face tracking with mediapipe; avatar auto-cropped"
else
    TRACK_FLAGS=(--no-track --no-crop)
    TRACKING_NOTE="mediapipe is not installed: fixed centre crop (--no-track) and uncropped avatar (--no-crop); tracking cost not measured"
fi
echo "gpu_live: $TRACKING_NOTE"

# Synthetic driving videos: the astronaut photo on a 1280x720 canvas, the head turning and
# moving around the face centre (a stand-in for a person in front of a webcam).
"$PYTHON" - "$WORK" <<'EOF'
import sys
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from liveanim.pipeline.video import EncoderConfig, VideoWriter

work = Path(sys.argv[1])
photo = cv2.resize(data.astronaut(), (720, 720), interpolation=cv2.INTER_CUBIC)
canvas = np.full((720, 1280, 3), 40, dtype=np.uint8)
canvas[:, 280:1000] = photo
face = (280 + 225 * 720 / 512, 115 * 720 / 512)
for fps in (30, 60):
    with VideoWriter(work / f"drive_{fps}.mp4", fps, (1280, 720), config=EncoderConfig(preset="veryfast")) as out:
        for i in range(10 * fps):
            t = i / fps
            matrix = cv2.getRotationMatrix2D(face, 10 * np.sin(2 * np.pi * 0.4 * t), 1.0)
            matrix[:, 2] += (25 * np.sin(2 * np.pi * 0.25 * t), 10 * np.sin(2 * np.pi * 0.3 * t))
            out.write(cv2.warpAffine(canvas, matrix, (1280, 720), borderMode=cv2.BORDER_REPLICATE))
EOF

for precision in $PRECISIONS; do
    for fps in 30 60; do
        echo "gpu_live: $precision at $fps fps input"
        "$PYTHON" main.py live --video "$WORK/drive_$fps.mp4" --loop --realtime --fps "$fps" \
            --output-size 1280x720 --max-frames "$FRAMES" ${TRACK_FLAGS[@]+"${TRACK_FLAGS[@]}"} \
            --seeded 2.0 --engine "$ENGINE" $ENGINE_FLAGS --device cuda --precision "$precision" \
            --stats-json "$WORK/run_${precision}_${fps}.json" 2>&1 | tail -n 5
    done
done

"$PYTHON" - "$WORK" "$OUT/gpu_live.json" "$TRACKING_NOTE" <<'EOF'
import json
import sys
from pathlib import Path

import torch

work, target, note = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
runs = []
for path in sorted(work.glob("run_*.json")):
    _, precision, fps = path.stem.split("_")
    runs.append({"precision": precision, "input_fps": int(fps), **json.loads(path.read_text())})
report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "tracking": note, "runs": runs}
target.write_text(json.dumps(report, indent=2))
for run in runs:
    print(f"{run['precision']} @ {run['input_fps']} fps in: {run['fps']:.1f} fps out, {run['dropped']} dropped, "
          f"latency p50 {run['latency_ms_p50']:.0f} ms p95 {run['latency_ms_p95']:.0f} ms, "
          f"peak {run['peak_gpu_memory_gb']:.2f} GB")
print(f"written {target} ({note})")
EOF
