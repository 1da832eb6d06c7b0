"""The contract that engines and the export share: graph and file names, tensor names and shapes,
and the helpers that cut and join calls along the batch axis. It sits below both, so that
neither imports the other for it.

    source_encoder.onnx   image (1,3,512,512)             -> z (1,L), alpha (1,40), feat0..feat6 (1,C,H,W)
    motion_encoder.onnx   image (batch,3,512,512)         -> alpha (batch,40)
    renderer.onnx         z_target (batch,L), feat0..feat6 (1,C,H,W) -> image (batch,3,512,512)

`batch` is a dynamic axis. The renderer takes the source features once (batch 1) and shares them
across the batch, so an avatar's 7 maps are never copied per frame. Every graph input and output
is float32, whatever precision runs inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from liveanim.model import RESOLUTION

Tensors = dict[str, torch.Tensor]  # every engine takes and returns float32 tensors by name
FEATURE_NAMES = tuple(f"feat{i}" for i in range(7))  # the source's feature maps, coarsest first
BATCH = "batch"
SOURCE_ENCODER, MOTION_ENCODER, RENDERER = "source_encoder", "motion_encoder", "renderer"
GRAPH_NAMES = (SOURCE_ENCODER, MOTION_ENCODER, RENDERER)
DIRECTIONS_FILE = "directions.npy"
MANIFEST_FILE = "manifest.json"

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One named float32 input or output; a dimension may be the dynamic `batch`."""

    name: str
    shape: tuple[Dim, ...]

    def resolve(self, batch: int) -> tuple[int, ...]:
        """The concrete shape for a batch size."""
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": "float32"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(data["name"], tuple(data["shape"]))


@dataclass(frozen=True)
class GraphSpec:
    """The inputs and outputs of one exported graph, in ONNX order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic_inputs(self) -> list[TensorSpec]:
        """Inputs with a `batch` axis (what a TensorRT optimization profile must cover)."""
        return [t for t in self.inputs if BATCH in t.shape]

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> "GraphSpec":
        return cls(name, tuple(map(TensorSpec.from_json, data["inputs"])),
                   tuple(map(TensorSpec.from_json, data["outputs"])))


def graph_specs(latent_dim: int, motion_dim: int,
                feature_shapes: Sequence[tuple[int, int, int]]) -> dict[str, GraphSpec]:
    """The three graphs of a model.

    latent_dim:     L, the length of z.
    motion_dim:     length of a motion code (40).
    feature_shapes: (C, H, W) of feat0..feat6, coarsest first, as the source encoder returns them.
    """
    assert len(feature_shapes) == len(FEATURE_NAMES), feature_shapes
    feats = tuple(TensorSpec(name, (1, *shape)) for name, shape in zip(FEATURE_NAMES, feature_shapes))
    image = (3, RESOLUTION, RESOLUTION)
    return {
        SOURCE_ENCODER: GraphSpec(SOURCE_ENCODER, (TensorSpec("image", (1, *image)),),
                                  (TensorSpec("z", (1, latent_dim)), TensorSpec("alpha", (1, motion_dim)), *feats)),
        MOTION_ENCODER: GraphSpec(MOTION_ENCODER, (TensorSpec("image", (BATCH, *image)),),
                                  (TensorSpec("alpha", (BATCH, motion_dim)),)),
        RENDERER: GraphSpec(RENDERER, (TensorSpec("z_target", (BATCH, latent_dim)), *feats),
                            (TensorSpec("image", (BATCH, *image)),)),
    }


def shared_source(feat: torch.Tensor) -> torch.Tensor:
    """A source feature map as batch 1: callers may pass it `expand`ed over the frames' batch."""
    if feat.shape[0] > 1 and feat.stride(0) == 0:
        return feat[:1]
    return feat


def batch_of(spec: GraphSpec, inputs: Tensors) -> int:
    """The batch size of a call, checked against the graph's input shapes (an internal contract)."""
    batch = 1
    for tensor_spec in spec.inputs:
        actual = tuple(inputs[tensor_spec.name].shape)
        if BATCH in tensor_spec.shape:
            batch = actual[tensor_spec.shape.index(BATCH)]
        assert actual == tensor_spec.resolve(batch), (spec.name, tensor_spec.name, actual, tensor_spec.shape)
    return batch


def split_batch(spec: GraphSpec, tensors: Tensors, batch: int, size: int) -> list[tuple[Tensors, int]]:
    """A call's inputs cut along the batch axis into calls of at most `size` (engines whose
    TensorRT profile stops at a smaller batch than the caller's): [(inputs, batch), ...]."""
    assert all(t.shape.index(BATCH) == 0 for t in spec.dynamic_inputs), spec
    dynamic = {t.name for t in spec.dynamic_inputs}
    return [({name: t[start:start + size] if name in dynamic else t for name, t in tensors.items()},
             min(size, batch - start)) for start in range(0, batch, size)]


def concat_batches(spec: GraphSpec, parts: list[Tensors]) -> Tensors:
    """The outputs of split calls, joined along the batch axis."""
    return {name: torch.cat([part[name] for part in parts]) for name in spec.output_names}
