"""manifest.json: what an export holds, written last so that its presence means a complete export.

Engines read graph names and shapes from it (never from the ONNX files) and key their caches on
its hashes: the model hash (sha256 over every state-dict tensor in name order) and one sha256 per
graph (its .onnx and .onnx.data bytes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from liveanim.contract import DIRECTIONS_FILE, GRAPH_NAMES, MANIFEST_FILE, GraphSpec
from liveanim.errors import EngineError
from liveanim.files import write_atomically

FORMAT = 1  # bump when the export changes in a way old exports cannot serve
CHUNK = 1 << 24


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A stable hash of a model's weights: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def files_sha256(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of several files, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportedGraph:
    """One graph of an export: its contract, its file hash and its measured export errors."""

    spec: GraphSpec
    sha256: str
    precision: str
    errors: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.spec.to_json(), "sha256": self.sha256, "precision": self.precision,
                "verification": self.errors}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> "ExportedGraph":
        return cls(GraphSpec.from_json(name, data), data["sha256"], data["precision"], data.get("verification", {}))


@dataclass(frozen=True)
class Manifest:
    """Everything an engine needs to know about an export folder.

    model_sha256: hash of the fp32 state dict the graphs came from.
    width:        model width (2.0 = released); latent_dim L and motion_dim follow from it.
    precision:    'fp32' or 'fp16' (the renderer's compute precision; I/O is always float32).
    opset:        ONNX opset of every graph.
    graphs:       source_encoder, motion_encoder, renderer.
    tools:        versions of torch, onnx, onnxscript and onnxruntime that made and checked it.
    """

    model_sha256: str
    width: float
    latent_dim: int
    motion_dim: int
    precision: str
    opset: int
    graphs: dict[str, ExportedGraph]
    tools: dict[str, str]
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "model_sha256": self.model_sha256, "width": self.width,
                "latent_dim": self.latent_dim, "motion_dim": self.motion_dim, "precision": self.precision,
                "opset": self.opset,
                "directions": {"file": DIRECTIONS_FILE, "shape": [self.latent_dim, self.motion_dim]},
                "graphs": {name: g.to_json() for name, g in self.graphs.items()}, "tools": self.tools}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        graphs = {name: ExportedGraph.from_json(name, data["graphs"][name]) for name in GRAPH_NAMES}
        return cls(data["model_sha256"], data["width"], data["latent_dim"], data["motion_dim"], data["precision"],
                   data["opset"], graphs, data["tools"], data["format"])

    def write(self, folder: Path) -> None:
        """Written whole or not at all: a reader never sees half a manifest."""
        write_atomically(folder / MANIFEST_FILE, json.dumps(self.to_json(), indent=2))


def read_manifest(folder: Path) -> Manifest:
    """The manifest of an export folder; EngineError if it is missing, foreign or incomplete."""
    path = folder / MANIFEST_FILE
    try:
        manifest = Manifest.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise EngineError(f"{folder} holds no complete export (no {MANIFEST_FILE}); "
                          "run `python main.py export`.") from None
    except (ValueError, KeyError, TypeError) as error:
        raise EngineError(f"{path} is unreadable or from another LiveAnim version ({error!r}); export again.") from None
    if manifest.format != FORMAT:
        raise EngineError(f"{path} is export format {manifest.format}, this LiveAnim reads {FORMAT}; export again.")
    missing = [g.spec.file for g in manifest.graphs.values() if not (folder / g.spec.file).is_file()]
    if missing:
        raise EngineError(f"{folder} misses {', '.join(missing)}; export again.")
    return manifest
