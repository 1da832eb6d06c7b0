"""The performer's neutral motion code a_0, the reference that relative motion is measured from.

LIA-X animates with `a_d - a_0`: whatever pose the reference holds, the avatar shows as its
own rest pose. The official code takes the first driving frame; live, the first frame is
often mid-movement (sitting down, reaching for the mouse). The reference is therefore the
mean of the first run of frames in which the code holds still, and is captured again when
the person asks (`calibrate`). Until the first capture the first frame stands in.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NeutralConfig:
    """When a run of frames counts as a neutral pose.

    frames:     consecutive face frames whose codes are averaged (about 0.5 s at 30 fps).
    max_spread: the run is still when the RMS over components of each component's standard
                deviation stays under this.
    patience:   after this many face frames without a still run, the stillest run seen is
                taken, so a person who never sits quite still still gets a reference.
    """

    frames: int = 15
    max_spread: float = 0.02
    patience: int = 150

    def __post_init__(self) -> None:
        if self.frames < 1 or self.patience < self.frames:
            raise ValueError(f"need 1 <= frames <= patience, got frames={self.frames}, patience={self.patience}")


class NeutralReference:
    """Watches motion codes and holds the neutral code a_0 once a still run is seen."""

    def __init__(self, config: NeutralConfig = NeutralConfig()) -> None:
        self.config = config
        self._window: deque[np.ndarray] = deque(maxlen=config.frames)
        self._value: np.ndarray | None = None
        self._captured = False
        self._seen = 0
        self._stillest: tuple[float, np.ndarray] | None = None

    @property
    def value(self) -> np.ndarray | None:
        """a_0 (motion_dim,), or None before any face was seen."""
        return self._value

    @property
    def capturing(self) -> bool:
        """Whether a still run is still being looked for."""
        return not self._captured

    def calibrate(self) -> None:
        """Capture a new reference from the next still run; the current one serves meanwhile."""
        self._captured = False
        self._seen = 0
        self._stillest = None
        self._window.clear()

    def interrupt(self) -> None:
        """The face was lost: a still run must be made of consecutive frames."""
        self._window.clear()

    def observe(self, code: np.ndarray) -> np.ndarray:
        """Take one face frame's code a_d; returns the reference to use for it."""
        code = np.asarray(code, dtype=np.float32)
        if self._value is None:
            self._value = code.copy()  # stand-in until a still run is seen
        if self._captured:
            return self._value
        self._window.append(code)
        self._seen += 1
        if len(self._window) == self.config.frames:
            self._consider(np.stack(self._window))
        return self._value

    def _consider(self, run: np.ndarray) -> None:
        spread = float(np.sqrt(np.mean(run.std(axis=0) ** 2)))
        if self._stillest is None or spread < self._stillest[0]:
            self._stillest = (spread, run.mean(axis=0))
        if spread <= self.config.max_spread:
            self._capture(run.mean(axis=0), f"spread {spread:.4f}")
        elif self._seen >= self.config.patience:
            best_spread, best_mean = self._stillest
            self._capture(best_mean, f"no still run; the stillest had spread {best_spread:.4f}")

    def _capture(self, mean: np.ndarray, why: str) -> None:
        self._value = mean.astype(np.float32)
        self._captured = True
        self._window.clear()
        log.info("neutral pose captured (%s)", why)
