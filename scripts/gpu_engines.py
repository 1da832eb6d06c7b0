"""Exported engines on the GPU machine: the full-width fp16 export, TensorRT for RTX engines for
the consumer GPUs, its refusal on this GPU, and ONNX Runtime's CUDA provider on the export.

    python3 scripts/gpu_engines.py STAGE [STAGE ...]

Stages (each under 10 minutes on an H200; run them in this order, one or a few per call: the
cache folder survives between calls on a warm machine, and each stage writes its own JSON, so a
partial run still yields data):
  env        versions, GPU, providers, TensorRT for RTX                                  -> env.json
  export     main.py export --seeded $WIDTH --precision P for P in $EXPORT_PRECISIONS
             (default "fp16"; fp16 took 152 s and fp32 107 s on an H100)              -> export-P.json
  rtx-build  build-engines --engine tensorrt-rtx --gpu-target ... from the fp16 export, once per
             target set of $TARGET_SETS (default "8.6,8.9,12.0": NVIDIA's portable default; Turing,
             7.5, is refused: no fp32 matrix products there): time, engine sizes, the library's
             warnings and errors (an unsupported layer stops the build and is named)   -> rtx-build.json
  rtx-refuse what happens on this GPU: `--engine tensorrt-rtx` (our message), `auto` on a
             width-0.125 model (each skip, then the engine it picks), and the library's own
             answer when asked to load an engine here (motion encoder of the first target set)
                                                                                      -> rtx-refuse.json
  ort-cuda   main.py bench --engines onnxruntime:cuda --precisions $ORT_PRECISIONS (fp32,fp16) --accuracy on the
             current export (needs onnxruntime-gpu; skipped with the reason otherwise) -> ort-cuda.json

Environment: OUT (results; default out/gpu-engines), LIVEANIM_CACHE (default /tmp/liveanim-cache:
outside the repository, kept on a warm machine), WIDTH (2.0), FRAMES (50), WARMUP (10).
Everything is logged to $OUT/gpu_engines.log as well as printed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(os.environ.get("OUT", "out/gpu-engines"))
CACHE = Path(os.environ.get("LIVEANIM_CACHE", "/tmp/liveanim-cache"))
WIDTH = os.environ.get("WIDTH", "2.0")
log = logging.getLogger("gpu_engines")


class _Records(logging.Handler):
    """Keeps the log records of one stage at WARNING and above (the libraries' complaints)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def cli(*argv: str) -> int:
    """One LiveAnim command, as main.py runs it, without importing every command (the GPU image
    lacks some of their dependencies)."""
    from liveanim.errors import LiveAnimError

    parser = argparse.ArgumentParser(prog="main.py")
    importlib.import_module(f"liveanim.app.cli.{argv[0].replace('-', '_')}").register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    log.info("main.py %s", " ".join(argv))
    try:
        return args.run(args)
    except LiveAnimError as error:
        log.error("%s", error)
        return 2


def write(name: str, report: Any) -> None:
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    log.info("wrote %s", path)


def env() -> None:
    """Versions of what the stages use, read from the installed packages' metadata."""
    from importlib import metadata

    import torch

    report: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                              "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
        report["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability()
    for package in ("onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "tensorrt-rtx-cu13-bindings"):
        try:
            report[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            report[package] = None
    # CUDA libraries read these (ONNX Runtime's cublasCreate fails with CUBLAS_WORKSPACE_CONFIG set:
    # microsoft/onnxruntime#16512), so a failure can be told apart from the machine's settings.
    report["environment"] = {name: value for name, value in os.environ.items()
                             if name.startswith(("CUDA", "CUBLAS", "CUDNN", "NVIDIA", "ORT_", "LD_LIBRARY"))}
    write("env", report)


def export() -> None:
    from liveanim.engines import EngineConfig, export_folder
    from liveanim.export import read_manifest

    for precision in os.environ.get("EXPORT_PRECISIONS", "fp16").split():
        started = time.perf_counter()
        status = cli("export", "--seeded", WIDTH, "--cache-dir", str(CACHE), "--precision", precision)
        folder = export_folder(EngineConfig(seeded=True, width=float(WIDTH), cache_dir=CACHE), precision)
        report: dict[str, Any] = {"precision": precision, "status": status, "seconds": time.perf_counter() - started,
                                  "folder": str(folder)}
        if status == 0:
            manifest = read_manifest(folder)
            report["mb"] = {p.name: p.stat().st_size / 1e6 for p in sorted(folder.iterdir())}
            report["verification"] = {name: graph.errors for name, graph in manifest.graphs.items()}
            report["tools"] = manifest.tools
        write(f"export-{precision}", report)


def rtx_build() -> None:
    results = []
    for targets in os.environ.get("TARGET_SETS", "8.6,8.9,12.0").split():
        records = _Records()
        logging.getLogger().addHandler(records)
        started = time.perf_counter()
        argv = ["build-engines", "--engine", "tensorrt-rtx", "--precision", "fp16", "--seeded", WIDTH,
                "--cache-dir", str(CACHE)]
        for target in targets.split(","):
            argv += ["--gpu-target", target]
        status = cli(*argv)
        logging.getLogger().removeHandler(records)
        results.append({"targets": targets, "status": status, "seconds": time.perf_counter() - started,
                        "engines_mb": _engine_sizes(), "warnings_and_errors": records.messages})
        write("rtx-build", results)  # after each target set: a partial run keeps what was built


def _engine_sizes() -> dict[str, float]:
    folder = CACHE / "tensorrt-rtx"
    return {str(p.relative_to(folder)): p.stat().st_size / 1e6 for p in sorted(folder.rglob("*.engine"))}


def rtx_refuse() -> None:
    import torch

    from liveanim.engines import EngineConfig, create_engine
    from liveanim.errors import LiveAnimError

    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(),
                              "compute_capability": "%d.%d" % torch.cuda.get_device_capability()}
    try:
        create_engine(EngineConfig(backend="tensorrt-rtx", device="cuda", precision="fp16", seeded=True,
                                   width=float(WIDTH), cache_dir=CACHE)).close()
        report["explicit"] = "ran (this GPU runs TensorRT for RTX)"
    except LiveAnimError as error:
        report["explicit"] = f"{type(error).__name__}: {error}"
    records = _Lines()
    logging.getLogger("liveanim.engines").addHandler(records)
    engine = create_engine(EngineConfig(device="cuda", precision="fp16", seeded=True, width=0.125, cache_dir=CACHE,
                                        compile=False, cuda_graphs=False))
    logging.getLogger("liveanim.engines").removeHandler(records)
    report["auto"] = {"picked": engine.describe(), "log": records.messages}
    engine.close()
    report["library"] = _load_here()
    write("rtx-refuse", report)


class _Lines(_Records):
    """Every record from INFO up (auto's reasons are at INFO)."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.INFO)


def _load_here() -> dict[str, Any]:
    """TensorRT for RTX's own answer to loading one of the built engines on this GPU."""
    import tensorrt_rtx as trt

    engines = sorted((CACHE / "tensorrt-rtx").rglob("motion_encoder-fp32.engine"))
    if not engines:
        return {"skipped": "no engine built yet (run rtx-build first)"}
    messages: list[str] = []

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, message: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR,
                            trt.ILogger.Severity.WARNING):
                messages.append(f"{severity.name}: {message}")

    runtime = trt.Runtime(Logger())
    engine = runtime.deserialize_cuda_engine(engines[0].read_bytes())
    context = engine.create_execution_context() if engine is not None else None
    return {"engine": str(engines[0]), "deserialized": engine is not None, "context": context is not None,
            "messages": messages}


def ort_cuda() -> None:
    try:
        import onnxruntime
    except ImportError as error:
        write("ort-cuda", {"skipped": f"onnxruntime not importable: {error}"})
        return
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        write("ort-cuda", {"skipped": f"onnxruntime {onnxruntime.__version__} has no CUDA provider "
                                      f"({onnxruntime.get_available_providers()}): carry onnxruntime-gpu"})
        return
    cli("bench", "--seeded", WIDTH, "--cache-dir", str(CACHE), "--device", "cuda", "--engines", "onnxruntime:cuda",
        "--precisions", os.environ.get("ORT_PRECISIONS", "fp32,fp16"), "--frames", os.environ.get("FRAMES", "50"),
        "--warmup", os.environ.get("WARMUP", "10"), "--accuracy", "--json", str(OUT / "ort-cuda.json"))


STAGES: dict[str, Callable[[], None]] = {"env": env, "export": export, "rtx-build": rtx_build,
                                         "rtx-refuse": rtx_refuse, "ort-cuda": ort_cuda}


def main(stages: list[str]) -> int:
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        print(f"stages: {', '.join(STAGES)} (see {__file__}'s docstring); unknown: {unknown}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout),
                                                      logging.FileHandler(OUT / "gpu_engines.log")])
    for stage in stages:
        log.info("=== %s", stage)
        started = time.perf_counter()
        try:
            STAGES[stage]()
        except Exception:  # one failed stage must not cost the others their data
            log.exception("stage %s failed", stage)
        log.info("=== %s done in %.0f s", stage, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
