"""Measure the live face tracker: frames with a face found, crop steadiness, ms per frame.

Runs `liveanim.face.FaceTracker` over two clips, exactly as the live loop calls it (one RGB
frame at a time), and writes one JSON file:

- `astronaut_head_motion`: synthetic head motion of a real photograph (scikit-image's
  astronaut, Eileen Collins, NASA, public domain) in a 1280x720 frame at 30 fps: 2 s still,
  8 s of talking-head motion (drifts, nods, small rolls, leaning in and out), 2 s of quick
  moves; camera noise on every frame, then H.264 compression (x264 CRF 23) and decoding. The
  face's true position is known, so the crop's wobble around it is measured as well.
- `megamind` (optional, `--megamind PATH`): `Megamind.avi` from Debian's opencv-doc package
  (`apt-get download opencv-doc`; /usr/share/doc/opencv-doc/examples/data/Megamind.avi), 270
  frames of a computer-animated film with talking faces and scene cuts (cuts move the crop).

No footage of a real person talking could be obtained here, so the first clip is synthetic
motion of a real photo, not a recording.

Usage (the same script, on the code and venv to measure):
    LIVEANIM_FACE_MODEL=../shared/models/face_landmarker.task \
    .venv/bin/python scripts/bench_face_tracking.py --label after --megamind /path/Megamind.avi
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data

FPS = 30
FRAME_W, FRAME_H = 1280, 720
PHOTO_SCALE = 2.4  # the 512-px astronaut enlarged so her face is about 260 px wide, as on a webcam
FACE_CENTRE = (225.0, 115.0)  # the astronaut's face centre in the 512-px photo
STILL_S, TALK_S, QUICK_S = 2.0, 8.0, 2.0


@dataclass(frozen=True)
class Pose:
    """The photo's placement in one frame: shift (px), roll (degrees) and scale about the face."""

    dx: float
    dy: float
    roll: float
    scale: float


def pose_at(t: float) -> Pose:
    """Head motion at time t (s): still, then talking (slow sums of sines), then quick moves."""
    if t < STILL_S:
        return Pose(0.0, 0.0, 0.0, 1.0)
    u = t - STILL_S
    dx = 18 * math.sin(2 * math.pi * 0.23 * u) + 6 * math.sin(2 * math.pi * 0.71 * u + 1)
    dy = 8 * math.sin(2 * math.pi * 0.31 * u + 0.5) + 3 * math.sin(2 * math.pi * 1.3 * u)
    roll = 4 * math.sin(2 * math.pi * 0.17 * u) + 1.5 * math.sin(2 * math.pi * 0.9 * u)
    scale = 1 + 0.05 * math.sin(2 * math.pi * 0.11 * u)
    if t >= STILL_S + TALK_S:  # quick moves: 120 px to the side and back within a second each
        v = t - STILL_S - TALK_S
        dx += 120 * math.sin(math.pi * v) ** 2
    return Pose(dx, dy, roll, scale)


def placement(pose: Pose) -> np.ndarray:
    """The 2x3 affine from photo pixels to frame pixels (face centred, then moved by the pose)."""
    cx, cy = FACE_CENTRE
    matrix = cv2.getRotationMatrix2D((cx, cy), pose.roll, PHOTO_SCALE * pose.scale)
    matrix[:, 2] += (FRAME_W / 2 + pose.dx - cx, FRAME_H / 2 - 40 + pose.dy - cy)
    return matrix


def face_centre(pose: Pose) -> np.ndarray:
    return placement(pose) @ np.array([*FACE_CENTRE, 1.0])


def make_astronaut_clip(path: Path) -> list[Pose]:
    """Write the synthetic clip as H.264 and return the pose of each frame."""
    photo = data.astronaut()
    rng = np.random.default_rng(20)
    frames = round((STILL_S + TALK_S + QUICK_S) * FPS)
    poses = [pose_at(i / FPS) for i in range(frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = FRAME_W, FRAME_H, "yuv420p"
        stream.options = {"crf": "23", "preset": "medium"}
        for pose in poses:
            frame = cv2.warpAffine(photo, placement(pose), (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT101)
            noisy = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return poses


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def track(frames: list[np.ndarray]) -> dict:
    """Boxes, found flags and per-frame times of a fresh tracker over the frames."""
    from liveanim.face import FaceTracker

    boxes, found, times, cpu_times = [], [], [], []
    with FaceTracker() as tracker:
        for frame in frames:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = tracker.track(frame)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            found.append(result.found)
            boxes.append(None if result.box is None else (result.box.left, result.box.top, result.box.size))
    return {"boxes": boxes, "found": found, "times": times, "cpu_times": cpu_times}


def crop_motion(boxes: list) -> np.ndarray:
    """Per pair of consecutive frames with a crop: how far the crop's centre moved, in px."""
    moves = []
    for before, after in zip(boxes, boxes[1:]):
        if before is None or after is None:
            continue
        centre_before = np.array(before[:2]) + before[2] / 2
        centre_after = np.array(after[:2]) + after[2] / 2
        moves.append(float(np.hypot(*(centre_after - centre_before))))
    return np.array(moves)


def summary(run: dict) -> dict:
    boxes, found = run["boxes"], run["found"]
    times_ms = np.array(run["times"][1:]) * 1000  # the first frame starts the graphs
    moves = crop_motion(boxes)
    sizes = np.array([box[2] for box in boxes if box is not None], dtype=float)
    return {
        "frames": len(found),
        "frames_with_face": int(sum(found)),
        "found_fraction": round(sum(found) / len(found), 4),
        "crop_motion_px_per_frame_mean": round(float(moves.mean()), 3) if moves.size else None,
        "crop_motion_px_per_frame_median": round(float(np.median(moves)), 3) if moves.size else None,
        "frames_where_the_crop_moved": int((moves > 0).sum()),
        "crop_size_px_median": float(np.median(sizes)) if sizes.size else None,
        "crop_motion_mean_over_crop_size": round(float(moves.mean() / np.median(sizes)), 5) if moves.size else None,
        "first_frame_ms": round(run["times"][0] * 1000, 1),
        "ms_per_frame_mean": round(float(times_ms.mean()), 2),
        "ms_per_frame_median": round(float(np.median(times_ms)), 2),
        "ms_per_frame_p95": round(float(np.percentile(times_ms, 95)), 2),
        "cpu_ms_per_frame_mean": round(float(np.mean(run["cpu_times"][1:]) * 1000), 2),
    }


def against_truth(run: dict, poses: list[Pose]) -> dict:
    """How the crop follows the known face: its wobble around the face and the still part's jitter."""
    still = round(STILL_S * FPS)
    truth = np.array([face_centre(pose) for pose in poses])
    offsets, scales = [], []
    for box, centre, pose in zip(run["boxes"], truth, poses):
        if box is not None:
            offsets.append(np.array(box[:2]) + box[2] / 2 - centre)
            scales.append(box[2] / pose.scale)
    offsets, scales = np.array(offsets), np.array(scales)
    face_moves = np.hypot(*np.diff(truth, axis=0).T)
    return {
        "face_motion_px_per_frame_mean": round(float(face_moves.mean()), 3),
        "still_part_crop_motion_px_per_frame_mean": round(float(crop_motion(run["boxes"][:still]).mean()), 3),
        "crop_centre_offset_from_face_std_px": [round(float(value), 2) for value in offsets.std(axis=0)],
        "crop_size_over_face_scale_relative_std": round(float(scales.std() / scales.mean()), 4),
    }


def still_face_sizes() -> dict:
    """Which face sizes `FaceDetector.detect` finds in a 1280x720 still (the photo on grey)."""
    from liveanim.face import FaceDetector

    photo, found = data.astronaut(), {}
    with FaceDetector() as detector:
        for face_px in (260, 200, 160, 130, 110, 90, 75, 60, 50):
            matrix = cv2.getRotationMatrix2D(FACE_CENTRE, 0, face_px / 105)  # the face is ~105 px wide
            matrix[:, 2] += (FRAME_W / 2 - FACE_CENTRE[0], FRAME_H / 2 - FACE_CENTRE[1])
            frame = cv2.warpAffine(photo, matrix, (FRAME_W, FRAME_H), borderValue=(128, 128, 128))
            box = detector.detect(frame)
            found[face_px] = None if box is None else round(box.width)
    return {"what": "face width in px -> width of the box found (null: no face found)", "found": found}


def versions() -> dict:
    import mediapipe

    return {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
            "mediapipe": mediapipe.__version__}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="names the result, e.g. before or after")
    parser.add_argument("--megamind", type=Path, default=None, help="Megamind.avi from Debian's opencv-doc")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "bench")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        clip = Path(work) / "astronaut_head_motion.mp4"
        poses = make_astronaut_clip(clip)
        frames = read_frames(clip)
    run = track(frames)
    clips = {"astronaut_head_motion": {**summary(run), **against_truth(run, poses),
                                       "what": "synthetic head motion of a real photo (not a recording), "
                                               "1280x720, 30 fps, camera noise, H.264 CRF 23"}}
    if args.megamind is not None:
        clips["megamind"] = {**summary(track(read_frames(args.megamind))),
                             "what": "Megamind.avi from Debian's opencv-doc 4.6: animated film, 720x528, "
                                     "scene cuts (each cut moves the crop)"}
    result = {
        "label": args.label,
        "date": datetime.date.today().isoformat(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "versions": versions(),
        "measured": "liveanim.face.FaceTracker.track on every frame, called from one thread, CPU; "
                    "ms = wall time per call, cpu_ms = CPU time of the whole process (all of "
                    "mediapipe's threads) per call; decoding excluded; the first frame (model "
                    "start) is reported apart. The machine's 2 cores were shared with other work "
                    "(see load_average_at_start): wall times vary with it, CPU times much less",
        "clips": clips,
        "stills_1280x720": still_face_sizes(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"face_tracking_{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
