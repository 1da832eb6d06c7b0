"""Where the app's model comes from: the released checkpoint, or seeded random weights.

Seeded weights let tests and demos run the whole app without the 3.6 GB download; they are
chosen in one place, `ModelSource.from_environment` (LIVEANIM_SEEDED_WIDTH=0.125).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from liveanim.engines import EngineConfig
from liveanim.errors import UsageError

log = logging.getLogger(__name__)

SEEDED_ENV = "LIVEANIM_SEEDED_WIDTH"


@dataclass(frozen=True)
class ModelSource:
    """The weights every engine of this run loads.

    seeded_width: use seeded random weights of this width instead of a checkpoint (tests,
                  demos, benchmarks); None for the real model.
    """

    seeded_width: float | None = None

    @classmethod
    def from_environment(cls) -> ModelSource:
        value = os.environ.get(SEEDED_ENV, "").strip()
        if not value:
            return cls()
        try:
            width = float(value)
            if not (math.isfinite(width) and width > 0):
                raise ValueError
        except ValueError:
            raise UsageError(f"{SEEDED_ENV}={value!r} is not a width; use e.g. {SEEDED_ENV}=0.125 "
                             "or leave it unset for the real model") from None
        log.warning("%s=%s: animating with seeded random weights, not the LIA-X model", SEEDED_ENV, width)
        return cls(seeded_width=width)

    @property
    def seeded(self) -> bool:
        return self.seeded_width is not None

    def engine_config(self, backend: str, precision: str, weights: Path | None) -> EngineConfig:
        """The engine to build for the chosen backend and precision."""
        # live: the preview starts at once, full speed once the compiled graphs are ready
        if self.seeded:
            return EngineConfig(backend=backend, precision=precision, seeded=True, width=self.seeded_width,
                                compile_in_background=True)
        return EngineConfig(backend=backend, precision=precision, weights=weights, compile_in_background=True)
