"""The one interface every inference backend implements.

Every engine takes and returns float32 torch tensors on `engine.device`, by name:

    encode_source({"image": (1,3,512,512)})            -> {"z": (1,L), "alpha": (1,40), "feat0".."feat6"}
    encode_motion({"image": (B,3,512,512)})            -> {"alpha": (B,40)}
    render({"z_target": (B,L), "feat0".."feat6"})      -> {"image": (B,3,512,512)}

Nothing outside `liveanim/engines/` knows which backend runs. The names are those of the exported
ONNX graphs (liveanim/contract.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from liveanim.contract import FEATURE_NAMES, Tensors
from liveanim.engines.devices import resolve_precision
from liveanim.model import RELEASED_WIDTH, RESOLUTION
from liveanim.model.dictionary import moved_latent

# The choices the command line, the window and the configs offer, each written once here.
BACKENDS = ("torch", "onnxruntime", "tensorrt", "tensorrt-rtx")
ENGINE_CHOICES = ("auto", *BACKENDS)  # 'auto': the fastest backend this machine has
DEVICES = ("auto", "cuda", "cpu", "mps")  # 'auto': CUDA, then MPS, then the CPU
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # 'auto': fp16 on CUDA, fp32 elsewhere


@dataclass(frozen=True)
class EngineConfig:
    """What to run and where.

    backend:   one of BACKENDS ('auto' is resolved by `liveanim.engines.create_engine`).
    device:    'cuda', 'cpu' or 'mps' ('auto' picks the best present).
    precision: 'auto' (fp16 on CUDA, fp32 elsewhere; resolved by `create_engine`), 'fp32', 'fp16'
               (GPUs only) or 'bf16' (GPUs, and CPUs with bf16 instructions).
    weights:   checkpoint path; None means the released model, downloaded on first use.
    seed:      with `weights=None` and `seeded=True`, random weights of the full model (benchmarks, tests).
    seeded:    use seeded random weights instead of a checkpoint.
    width:     model width for seeded weights (2.0 = released size).
    cache_dir: where exported graphs and built engines are kept.
    compile:   torch backend: torch.compile the per-frame graphs; None turns it on wherever the
               torch backend runs on CUDA with Triton (3x faster there; the first start compiles for
               minutes); without Triton (Windows, macOS) it stays off, and True is an error.
    cuda_graphs: torch backend: replay the per-frame graphs as CUDA graphs; None turns them on
               wherever the torch backend runs on CUDA (they cost nothing to set up).
    compile_in_background: torch backend, compiled: serve the first calls uncompiled while the
               compiled graphs are prepared on a thread of their own (the live loop: frames
               seconds after start, full speed once compiled); False waits for them.
    """

    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    weights: Path | None = None
    seeded: bool = False
    seed: int = 0
    width: float = RELEASED_WIDTH
    cache_dir: Path | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None
    compile_in_background: bool = False


@dataclass(frozen=True)
class OptimizingProgress:
    """How far an engine is with the work it does in the background to run faster on this machine
    (the torch engine: compiling its per-frame graphs), counted in graphs: a graph compiled in
    parts counts each part, so that the count moves while the parts compile side by side.

    finished:    graphs ready (failed ones included); equal to `graphs` only once all work has ended.
    graphs:      graphs asked for so far (more may come: one set per new input shape).
    failed:      graphs that failed (they keep running the slower way).
    remaining_s: seconds until every graph asked for is ready, estimated from how long each job took
                 from its submission the last time on this machine; None where one was never measured.
    first_time:  nothing was ever measured on this machine (GPU, PyTorch, precision, model).
    """

    finished: int
    graphs: int
    failed: int = 0
    remaining_s: float | None = None
    first_time: bool = False

    @property
    def done(self) -> bool:
        return self.finished == self.graphs


class Engine(ABC):
    """An LIA-X runtime: the three graphs and the dictionary basis Q."""

    name: str = "base"

    def __init__(self, config: EngineConfig, device: torch.device):
        self.config = replace(config, precision=resolve_precision(config.precision, device))
        self.device = device

    @property
    def precision(self) -> str:
        return self.config.precision

    @property
    @abstractmethod
    def directions(self) -> torch.Tensor:
        """Q: (L, 40) float32 on `device`, so that z_target = z + code @ Q.T needs no model."""

    @abstractmethod
    def encode_source(self, inputs: Tensors) -> Tensors:
        """{"image"} -> {"z", "alpha", "feat0".."feat6"}; run once per avatar."""

    @abstractmethod
    def encode_motion(self, inputs: Tensors) -> Tensors:
        """{"image"} -> {"alpha"}; run per driving frame."""

    @abstractmethod
    def render(self, inputs: Tensors) -> Tensors:
        """{"z_target", "feat0".."feat6"} -> {"image"} (not clamped); run per frame."""

    def target_latent(self, z: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The renderer's input z_target = z + code @ Q.T, with this engine's Q.

        z:    (1, L) the source latent.
        code: (B or 1, 40) the summed motion code.
        """
        return moved_latent(z, code, self.directions)

    @property
    def prepare_frames(self) -> int:
        """How many frames `prepare` runs: one on a GPU, whose first frame sets up (cuDNN's
        autotuning, ONNX Runtime's TensorRT provider's build); none elsewhere, where a first frame
        only costs its seconds."""
        return 1 if self.device.type == "cuda" else 0

    def prepare(self) -> None:
        """Do the work of the first frames before there are any (the window calls it as it builds
        the engine, while the user sets up): `prepare_frames` frames of a blank image at batch 1.
        What that work is depends on the engine: ONNX Runtime's TensorRT provider builds its engine
        at its first run; the torch engine loads its saved graphs, or starts compiling them."""
        if self.prepare_frames == 0:
            return
        image = torch.zeros(1, 3, RESOLUTION, RESOLUTION, device=self.device)
        source = self.encode_source({"image": image})
        maps = {name: source[name] for name in FEATURE_NAMES}
        for _ in range(self.prepare_frames):
            alpha = self.encode_motion({"image": image})["alpha"]
            self.render({"z_target": self.target_latent(source["z"], alpha), **maps})
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wait_until_compiled(self, timeout: float | None = None) -> bool:
        """Wait until the background work that `optimizing` reports has ended; False on timeout.
        Engines that do none return at once."""
        return True

    def optimizing(self) -> OptimizingProgress | None:
        """The background work that makes this engine faster, while frames are served the slower
        way; None where the engine does none. Cheap: callers poll it once per frame."""
        return None

    def describe(self) -> str:
        """What the user sees: backend, device and precision."""
        return f"{self.name} on {self.device} ({self.precision})"

    def close(self) -> None:
        """Release GPU memory and handles."""
