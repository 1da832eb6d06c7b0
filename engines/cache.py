"""Where exported graphs and built engines live, and when a cached engine is stale (no TensorRT needed).

    <cache>/onnx/<weights fingerprint>-<precision>/                    an export (see export/)
    <cache>/tensorrt/<export folder name>/<graph>-<precision>.engine   a serialized TensorRT engine
    <cache>/tensorrt/<export folder name>/<graph>-<precision>.json     the EngineKey it was built for
    <cache>/tensorrt/timing-<GPU and TensorRT digest>.cache            kernel timings, shared by builds
    <cache>/onnxruntime-tensorrt/<export folder name>/                 ONNX Runtime's TensorRT provider

A TensorRT engine only runs on the GPU model and TensorRT version it was built with, so its key
holds those next to the ONNX file's hash, the precision and the build options; any difference
means rebuild, and `EngineKey.differences` says why in words for the log.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ONNX_DIR = "onnx"
TENSORRT_DIR = "tensorrt"
ORT_TENSORRT_DIR = "onnxruntime-tensorrt"


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
    gpu_name:           e.g. 'NVIDIA H100 80GB HBM3'.
    compute_capability: e.g. '9.0'.
    trt_version:        TensorRT's version string.
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
                for f in fields(self) if getattr(self, f.name) != getattr(built, f.name)]


@dataclass(frozen=True)
class EngineFiles:
    """The engine file of one graph and the key file beside it."""

    engine: Path
    key: Path

    @classmethod
    def of(cls, folder: Path, graph: str) -> "EngineFiles":
        return cls(folder / f"{graph}.engine", folder / f"{graph}.json")


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


def tensorrt_dir(cache_root: Path, export_folder: Path) -> Path:
    """TensorRT engines of one export: a new export (other weights, precision) gets a new folder."""
    return cache_root / TENSORRT_DIR / export_folder.name
