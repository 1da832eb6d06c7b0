"""The engine that a child process compiles one graph with (prefill.py): the live process's engine,
with placeholder values for only the weights that the graph reads.

A saved graph takes the weights as inputs, so it serves any weights of the same shapes and layout
(tests/test_prefill.py checks it): the child never reads the checkpoint. Its model is made on the
meta device (shapes, no memory), folded there as the live engine folds its own, and only the
modules that the job's graph reads (`reads()`) then get memory on the device. Every child held the
whole model before (4.2 GB folded at full width in fp32, 2.15 GB in fp16); a decoder stage reads
at most 27% of it (the modulation bank's rows of every layer included), the motion encoder 11%,
the 512x512 stage 10% (tests/test_prefill.py), so a GPU beside the live process holds more
children at once (`child_slots`). The graph's inputs are made the same way: their shapes and
layouts come from a run on the meta device, as the live process hands them to the graph.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from liveanim.engines.base import EngineConfig
from liveanim.engines.torch_engine.backend import MotionGraph, RenderPart, TorchEngine
from liveanim.engines.torch_engine.prefill import MOTION_GRAPH, RENDER_GRAPH, PrefillJob
from liveanim.model import LIAX, RESOLUTION
from liveanim.model.folding import fold_for_inference
from liveanim.model.layers import KernelForms


@dataclass(frozen=True)
class PartInputs:
    """What a part of the renderer is called with, on the engine's device: the latent, what the
    part before it hands on (`RenderPart`: channels-last) and the source's 7 maps."""

    z_target: torch.Tensor
    carry: tuple[torch.Tensor, ...]
    maps: tuple[torch.Tensor, ...]


class PlaceholderEngine(TorchEngine):
    """A `TorchEngine` made as the live process makes its own (width, precision, device, kernel
    forms, cache folder: a graph compiled here is the one it looks for), compiled at the first call
    instead of in the background and without CUDA graphs, which do not change the compiled code."""

    def __init__(self, job: PrefillJob):
        if job.graph not in (MOTION_GRAPH, RENDER_GRAPH) or (job.graph == RENDER_GRAPH) != (job.part is not None):
            raise ValueError(f"the torch engine compiles no graph {job.graph + job.part_label()!r} (the renderer's "
                             "jobs name their part)")
        self.job = job
        self.part_inputs: PartInputs | None = None
        config = EngineConfig(backend="torch", device=job.device, precision=job.precision, width=job.width,
                              compile=True, cuda_graphs=False,
                              cache_dir=None if job.cache_dir is None else Path(job.cache_dir))
        with torch.device("meta"):
            model = LIAX(job.width)
        super().__init__(config, torch.device(job.device), model)

    def compile_job(self) -> None:
        """Compile and save the job's graph (load it, where it is saved already)."""
        if self.part_inputs is None:
            self.encode_motion({"image": torch.zeros(self.job.shape)})
        else:
            self.compile_render_part(self.job.part, self.part_inputs.z_target, self.part_inputs.carry,
                                     self.part_inputs.maps)

    def _take_over(self, model: LIAX, forms: KernelForms, channels_last: bool) -> LIAX:
        """The meta model folded as `TorchEngine` folds a loaded one, then given memory and
        placeholder values where the job's graph reads it (and the motion dictionary, which the
        engine reads when it is made)."""
        model = model.to(dtype=self.dtype).eval().requires_grad_(False)
        fold_for_inference(model, forms, channels_last=channels_last)
        if self.job.part is not None:
            self.part_inputs = self._part_inputs(model)
        graph = MotionGraph(model) if self.job.part is None else RenderPart(model, *self.job.part)
        for module in (model.dec.direction, *graph.reads()):
            module.to_empty(device=self.device)
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                if not tensor.is_meta:
                    tensor.uniform_(0.5, 1.0)  # positive: no divisions by zero
        return model

    def _part_inputs(self, model: LIAX) -> PartInputs:
        """The part's inputs, shaped and laid out by a run of the meta model (before any module
        has memory): the stages before the part hand on what it takes."""
        first, _ = self.job.part
        z_target = torch.zeros(self.job.shape, device="meta", dtype=self.dtype)
        with torch.no_grad():
            maps = model.encode_source(torch.zeros(1, 3, RESOLUTION, RESOLUTION, device="meta", dtype=self.dtype)).feats
            carry = RenderPart(model, 0, first)(z_target, *maps[:first]) if first > 0 else ()
        return PartInputs(self._zeros_like(z_target), tuple(map(self._zeros_like, carry)),
                          tuple(map(self._zeros_like, maps)))

    def _zeros_like(self, tensor: torch.Tensor) -> torch.Tensor:
        """Zeros of `tensor`'s shape, dtype and strides on the engine's device."""
        return torch.zeros_like(tensor, device=self.device)
