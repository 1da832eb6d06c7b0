"""Where exported graphs and built engines live, and when a cached engine is stale (no TensorRT needed).

    <cache>/onnx/<weights fingerprint>-<precision>/                        an export (see liveanim/export/)
    <cache>/<library>/<export folder name>/<graph>-<precision>.engine      a serialized engine
    <cache>/<library>/<export folder name>/<graph>-<precision>.json        the EngineKey it was built for
    <cache>/tensorrt/timing-<GPU and TensorRT digest>.cache                kernel timings, shared by builds
    <cache>/tensorrt-rtx/<export>/<graph>-<precision>.runtime-<digest>.cache  kernels compiled just in
                                                                           time on one GPU (TensorRT for RTX)
    <cache>/onnxruntime-tensorrt/<export folder name>/                     ONNX Runtime's TensorRT provider
    <cache>/torch/compile_times.json                                       how long the torch engine's
                                                                           graphs took to compile, for estimates
    <cache>/torch/graphs/<graph>-<digest>.pt2 (and .inputs.json)           the torch engine's compiled
                                                                           graphs (torch_engine/saved_graphs.py)

<library> is 'tensorrt' or 'tensorrt-rtx'. A TensorRT engine only runs on the GPU model and
TensorRT version it was built with, so its key holds those next to the ONNX file's hash, the
precision and the build options; a TensorRT for RTX engine runs on every GPU of the compute
capabilities it was built for, so its key names those and no GPU. Any difference means rebuild,
and `EngineKey.differences` says why in words for the log.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ONNX_DIR = "onnx"
ORT_TENSORRT_DIR = "onnxruntime-tensorrt"


def cache_root(cache_dir: Path | None) -> Path:
    """The cache folder: `cache_dir` (EngineConfig's), by default the user's cache."""
    if cache_dir is not None:
        return cache_dir
    from liveanim.weights import default_cache_dir

    return default_cache_dir()


def seeded_fingerprint(width: float, seed: int) -> str:
    """Seeded random weights are identified by how they were drawn."""
    return f"seeded-w{width:g}-s{seed}"


def file_fingerprint(path: Path, size: int, mtime_ns: int) -> str:
    """A checkpoint file, identified cheaply (no 3.6 GB read) by where it is, its size and mtime."""
    key = hashlib.sha256(f"{path.resolve()}|{size}|{mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{key}"


def model_fingerprint(model_sha256: str) -> str:
    """An in-memory model, identified by the hash of its weights."""
    return f"model-{model_sha256[:16]}"


def export_dir(cache_root: Path, fingerprint: str, precision: str) -> Path:
    return cache_root / ONNX_DIR / f"{fingerprint}-{precision}"


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT engine depends on.

    onnx_sha256:        hash of the ONNX graph and its weights (from the export's manifest).
    gpu_name:           e.g. 'NVIDIA H100 80GB HBM3'; '' for engines that run on any GPU of their
                        compute capabilities (TensorRT for RTX).
    compute_capability: e.g. '9.0', or several, '8.6,8.9,12.0': an engine serves every compute
                        capability it was built for.
    trt_version:        the library's version string (TensorRT or TensorRT for RTX).
    precision:          'fp32' or 'fp16'.
    options:            build options that change the engine (batch profile, typing mode).
    """

    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    trt_version: str
    precision: str
    options: str = ""

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EngineKey":
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def differences(self, built: "EngineKey") -> list[str]:
        """Why an engine built for `built` cannot serve this key, one phrase per field."""
        return [f"{f.name.replace('_', ' ')} {getattr(built, f.name)!r} -> {getattr(self, f.name)!r}"
                for f in fields(self) if not _serves(f.name, getattr(built, f.name), getattr(self, f.name))]


def _serves(field: str, built: str, wanted: str) -> bool:
    """Fields must match, except that an engine built for several compute capabilities serves each."""
    if field == "compute_capability":
        return set(wanted.split(",")) <= set(built.split(","))
    return built == wanted


@dataclass(frozen=True)
class EngineFiles:
    """The engine file of one graph and the key file beside it."""

    engine: Path
    key: Path

    @classmethod
    def of(cls, folder: Path, graph: str) -> "EngineFiles":
        return cls(folder / f"{graph}.engine", folder / f"{graph}.json")

    def runtime_cache(self, key: "EngineKey") -> Path:
        """Kernels compiled just in time for this engine on the GPU, library and export of `key`."""
        return self.engine.with_name(f"{self.engine.stem}.runtime-{key.digest()}.cache")


def stale_reason(files: EngineFiles, key: EngineKey) -> str | None:
    """None if the cached engine was built for `key`; otherwise why it must be (re)built."""
    if not files.engine.is_file():
        return "no engine built yet"
    try:
        built = EngineKey.from_json(files.key.read_text())
    except FileNotFoundError:
        return "its key file is missing"
    except (ValueError, KeyError, TypeError):
        return "its key file is unreadable"
    changed = key.differences(built)
    return "built for another setup: " + "; ".join(changed) if changed else None


def engine_dir(cache_root: Path, library: str, export_folder: Path) -> Path:
    """The engines one library built from one export: a new export (other weights, precision)
    gets a new folder. library: 'tensorrt' or 'tensorrt-rtx'."""
    return cache_root / library / export_folder.name
