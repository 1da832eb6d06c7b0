#!/usr/bin/env bash
# Set up LiveAnim in ./.venv: the app, the desktop UI, ONNX tools and the test tools.
# mediapipe 0.10.21 is installed without its own dependency list, because that list pins
# opencv-contrib-python (a second OpenCV beside our headless one) and jax (not needed for
# the face models we use); its real needs are in pyproject.toml.
# Usage: bash scripts/setup.sh [extra,extra]   (default: ui,onnx,test; on NVIDIA machines ui,gpu,test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-ui,onnx,test}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
.venv/bin/python -m pip install -q --no-deps "mediapipe==0.10.21"
.venv/bin/python -c "import mediapipe, torch, cv2; print('LiveAnim ready: torch', torch.__version__, '| CUDA', torch.cuda.is_available())"
