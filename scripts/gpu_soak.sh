#!/usr/bin/env bash
# The 10-minute soak on a GPU, in the steps a device machine's 10-minute commands allow:
#
#   prepare  install the wheels carried in ./.whl into ./.site (kept between calls on a warm
#            machine) and compile the fp16 graphs once (Inductor's cache), so the soak starts warm
#   start    install ./.whl's wheels likewise (a second batch: the 64-MiB carry limit holds PyAV or
#            mediapipe, not both), then start scripts/soak.py in a session of its own (it outlives
#            the command) on the full
#            model (seeded, width 2.0), fp16, face tracking on, a 1280x720 video played in real
#            time for MINUTES (default 10); it writes ./soak-run/soak_h200.json
#   collect  wait until the soak has ended, then copy its JSON and log to $OUT
#
# Each step is one call; the machine must stay warm in between (call again within seconds).
# Environment: PYTHON (default python3), MINUTES (default 10), LIVE_FLAGS (more `main.py live`
#              options, e.g. the face model's path),
#              ALLOW_NO_TRACKING=1 (run without mediapipe: fixed centre crop; the JSON says so).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
MINUTES="${MINUTES:-10}"
RUN=soak-run
export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

install_wheels() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl
    fi
}

case "${1:-}" in
prepare)
    install_wheels
    "$PYTHON" -c "import torch, av; assert torch.cuda.is_available(), 'no CUDA GPU'; print('gpu_soak: torch', torch.__version__, '| av', av.__version__)"
    "$PYTHON" main.py build-engines --engine torch --precision fp16 --seeded 2.0
    ;;
start)
    install_wheels
    track=()
    if ! "$PYTHON" -c "import mediapipe" 2>/dev/null; then
        [ "${ALLOW_NO_TRACKING:-}" = 1 ] || { echo "gpu_soak: mediapipe is not installed (carry its wheels)"; exit 1; }
        track=(--no-track --no-crop)
    fi
    mkdir -p "$RUN"
    setsid nohup "$PYTHON" scripts/soak.py --minutes "$MINUTES" --every 30 --size 1280x720 --fps 30 \
        --out "$RUN/soak_h200.json" -- --seeded 2.0 --device cuda --precision fp16 --output-size 1280x720 \
        ${track[@]+"${track[@]}"} ${LIVE_FLAGS:-} >"$RUN/soak.log" 2>&1 </dev/null &
    echo "gpu_soak: started ($MINUTES min); log in $RUN/soak.log"
    sleep 60 && tail -n 5 "$RUN/soak.log"
    ;;
collect)
    while pgrep -f "scripts/soak.py --minutes" >/dev/null; do sleep 5; done
    mkdir -p "${OUT:-out}"
    cp "$RUN/soak_h200.json" "$RUN/soak.log" "${OUT:-out}/"
    tail -n 3 "$RUN/soak.log"
    ;;
*)
    echo "usage: scripts/gpu_soak.sh prepare|start|collect" >&2
    exit 2
    ;;
esac
