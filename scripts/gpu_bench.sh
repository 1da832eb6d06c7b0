#!/usr/bin/env bash
# LiveAnim on a GPU: export the full-width seeded LIA-X, then benchmark and check every engine.
#
#   scripts/gpu_bench.sh STAGE [STAGE...]
#
# Stages (each fits in a 10-minute command on an H100; the cache below survives between calls
# on a warm machine, so run them in this order):
#   env                  versions, GPU, ONNX Runtime providers, TensorRT          -> env.json
#   export               main.py export --seeded $WIDTH for each of $EXPORT_PRECISIONS (default
#                        "fp32 fp16"; a few minutes each, with the ONNX Runtime CPU check) -> (cache)
#   torch                torch, torch+graphs      x fp32,fp16,bf16 --accuracy     -> torch.json
#   compile              torch+compile+graphs     x fp32,fp16,bf16 --accuracy     -> compile.json
#   onnxruntime          onnxruntime:cuda,:tensorrt x fp32,fp16 --accuracy (skipped with the reason
#                        where the image's onnxruntime has no GPU provider)      -> onnxruntime.json
#   onnxruntime-cpu      onnxruntime:cpu fp32, 3 frames (seconds per frame)     -> onnxruntime-cpu.json
#   tensorrt-build       main.py build-engines --engine tensorrt, one precision per call:
#                        PRECISION=fp16 (default) or fp32 (minutes per engine)
#   tensorrt             tensorrt x fp32,fp16 --accuracy (engines from tensorrt-build) -> tensorrt.json
#
# Environment: OUT (results; default out/gpu-bench), PYTHON (default python3), WIDTH (2.0),
# FRAMES (100), WARMUP (10), LIVEANIM_BENCH_CACHE (default build/liveanim-cache: git-ignored, so it
# stays on the machine between calls and does not travel back). Everything is logged to
# $OUT/gpu_bench.log; each benchmark stage writes one JSON file (at most 8 files come back).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-bench}
PYTHON=${PYTHON:-python3}
WIDTH=${WIDTH:-2.0}
FRAMES=${FRAMES:-100}
WARMUP=${WARMUP:-10}
CACHE=${LIVEANIM_BENCH_CACHE:-build/liveanim-cache}
mkdir -p "$OUT" "$CACHE"
LOG="$OUT/gpu_bench.log"

# One LiveAnim command without main.py, which imports every command (the GPU image lacks some of
# their dependencies, e.g. PyAV); same logging and error handling as main.py.
liveanim() {
    "$PYTHON" - "$@" <<'PY' 2>&1 | tee -a "$LOG"
import argparse, importlib, logging, sys
from liveanim.errors import LiveAnimError
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
command = sys.argv[1]
parser = argparse.ArgumentParser(prog="main.py")
importlib.import_module(f"liveanim.app.cli.{command.replace('-', '_')}").register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.run(args))
except LiveAnimError as error:
    logging.getLogger("liveanim").error("%s", error)
    sys.exit(2)
PY
}

bench() {  # bench NAME ENGINES PRECISIONS [extra bench options]
    local name=$1 engines=$2 precisions=$3
    shift 3
    liveanim bench --seeded "$WIDTH" --cache-dir "$CACHE" --device cuda --engines "$engines" \
        --precisions "$precisions" --frames "$FRAMES" --warmup "$WARMUP" --json "$OUT/$name.json" "$@"
}

env_report() {
    "$PYTHON" - <<'PY' | tee "$OUT/env.json" | tee -a "$LOG"
import json, platform, torch
report = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
          "cudnn": torch.backends.cudnn.version()}
for name in ("onnx", "onnxscript", "onnxruntime", "tensorrt"):
    try:
        module = __import__(name)
        report[name] = module.__version__
    except ImportError as error:
        report[name] = f"not importable: {error}"
try:
    import onnxruntime
    report["onnxruntime_providers"] = onnxruntime.get_available_providers()
except ImportError:
    pass
print(json.dumps(report, indent=2))
PY
}

for stage in "$@"; do
    echo "=== $stage ($(date +%T))" | tee -a "$LOG"
    case $stage in
        env) env_report ;;
        export)
            for precision in ${EXPORT_PRECISIONS:-fp32 fp16}; do
                liveanim export --seeded "$WIDTH" --cache-dir "$CACHE" --precision "$precision"
            done ;;
        torch) bench torch torch,torch+graphs fp32,fp16,bf16 --accuracy ;;
        compile) bench compile torch+compile+graphs fp32,fp16,bf16 --accuracy ;;
        onnxruntime) bench onnxruntime onnxruntime:cuda,onnxruntime:tensorrt fp32,fp16 --accuracy ;;
        onnxruntime-cpu)
            liveanim bench --seeded "$WIDTH" --cache-dir "$CACHE" --device cpu --engines onnxruntime:cpu \
                --precisions fp32 --frames 3 --warmup 1 --json "$OUT/onnxruntime-cpu.json" ;;
        tensorrt-build)
            liveanim build-engines --seeded "$WIDTH" --cache-dir "$CACHE" --engine tensorrt \
                --precision "${PRECISION:-fp16}" ;;
        tensorrt) bench tensorrt tensorrt fp32,fp16 --accuracy ;;
        *) echo "unknown stage: $stage (see the header of $0)" >&2; exit 2 ;;
    esac
done
