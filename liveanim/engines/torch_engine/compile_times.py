"""How long each background compile took the last time on this machine: the estimate shown while
the next start compiles ("about 40 s left").

One small JSON in the engine cache (`<cache>/torch/compile_times.json`) maps a key to the seconds
each job took. The key holds everything a compile's duration depends on: the device, PyTorch's
version (Inductor's cache is per version), the precision, the model's width and the kernel forms.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from liveanim.engines.devices import cuda_gpu
from liveanim.files import write_atomically
from liveanim.model.layers import KernelForms

log = logging.getLogger(__name__)

COMPILE_TIMES_FILE = Path("torch") / "compile_times.json"


def compile_key(device: torch.device, precision: str, width: float, forms: KernelForms) -> str:
    """What the compile times of the per-frame graphs depend on, in one line."""
    name = cuda_gpu(device).name if device.type == "cuda" else device.type
    return f"{name} | torch {torch.__version__} | {precision} | width {width:g} | {forms}"


class CompileTimes:
    """The seconds each job took the last time under one key, read once; each finished job's time
    is written at once, so a session stopped halfway keeps what it measured."""

    def __init__(self, cache_root: Path, key: str):
        self.path = cache_root / COMPILE_TIMES_FILE
        self.key = key
        self.last: dict[str, float] = self._read().get(key, {})

    def record(self, job: str, seconds: float) -> None:
        """Keep `seconds` as the time of `job` for the next start (a failed write is only logged)."""
        entries = self._read()
        entries.setdefault(self.key, {})[job] = round(seconds, 1)
        try:
            write_atomically(self.path, json.dumps(entries, indent=1, sort_keys=True))
        except OSError as error:
            log.info("compile times not kept in %s (%s): the next start shows no estimate", self.path, error)

    def _read(self) -> dict[str, dict[str, float]]:
        try:
            entries = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.info("compile times in %s unreadable (%s); starting them afresh", self.path, error)
            return {}
        return entries if isinstance(entries, dict) else {}
