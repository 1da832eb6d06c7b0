"""What the engines that run exported graphs share (ONNX Runtime, TensorRT): one runner per
graph, called by the graph's name, and Q read from the export's directions.npy."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from liveanim.contract import DIRECTIONS_FILE, MOTION_ENCODER, RENDERER, SOURCE_ENCODER, Tensors
from liveanim.engines.base import Engine, EngineConfig


class GraphRunner(Protocol):
    """One exported graph on a backend: named float32 tensors in, named float32 tensors out."""

    def run(self, inputs: Tensors) -> Tensors: ...


class ExportedGraphsEngine(Engine):
    """An engine over an export folder; subclasses fill `self._graphs` with their runners."""

    def __init__(self, config: EngineConfig, device: torch.device, export_folder: Path):
        super().__init__(config, device)
        self._graphs: dict[str, GraphRunner] = {}
        self._directions = torch.from_numpy(np.load(export_folder / DIRECTIONS_FILE)).float().to(device)

    @property
    def directions(self) -> torch.Tensor:
        return self._directions

    def encode_source(self, inputs: Tensors) -> Tensors:
        return self._graphs[SOURCE_ENCODER].run(inputs)

    def encode_motion(self, inputs: Tensors) -> Tensors:
        return self._graphs[MOTION_ENCODER].run(inputs)

    def render(self, inputs: Tensors) -> Tensors:
        return self._graphs[RENDERER].run(inputs)

    def close(self) -> None:
        self._graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
