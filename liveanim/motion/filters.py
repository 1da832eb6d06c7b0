"""The One Euro filter over motion codes: still when the face is still, quick when it moves.

A motion code read from a webcam trembles with sensor noise and crop jitter; a fixed
low-pass filter that hides the tremble makes real motion lag. The One Euro filter (Casiez,
Roussel and Vogel, CHI 2012) lowers its cutoff when the signal is slow and raises it with
the signal's speed, per component. Face boxes are smoothed by `liveanim.face.tracker`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from liveanim.motion.limits import LIMITS


@dataclass(frozen=True)
class OneEuroConfig:
    """The filter's three parameters.

    min_cutoff: cutoff frequency (Hz) while the signal holds still; lower = smoother, more lag.
    beta:       how much the cutoff rises per unit of speed (units per second); higher = less lag.
    d_cutoff:   cutoff frequency (Hz) of the speed estimate itself.
    """

    min_cutoff: float = 1.0
    beta: float = 0.5
    d_cutoff: float = 1.0


@dataclass(frozen=True)
class SmoothingRange:
    """Maps the user's smoothing amount in [0, 1] onto One Euro parameters.

    0 means no filtering at all; from there the still-signal cutoff falls geometrically
    from `lightest_cutoff` to `heaviest_cutoff` Hz as the amount reaches 1.
    """

    lightest_cutoff: float = 8.0
    heaviest_cutoff: float = 0.3
    beta: float = 0.5
    d_cutoff: float = 1.0

    def at(self, amount: float) -> OneEuroConfig | None:
        """The filter for `amount`, or None for raw (unfiltered) codes."""
        if LIMITS.smoothing.check(amount, "smoothing (0 = raw, 1 = heavy)") == 0.0:
            return None
        cutoff = self.lightest_cutoff * (self.heaviest_cutoff / self.lightest_cutoff) ** amount
        return OneEuroConfig(min_cutoff=cutoff, beta=self.beta, d_cutoff=self.d_cutoff)


def _smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """The exponential smoothing weight of a first-order low-pass at `cutoff` Hz over `dt` s."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filters a stream of vectors stamped with times in seconds; None config = pass-through."""

    def __init__(self, config: OneEuroConfig | None = OneEuroConfig()) -> None:
        self.config = config
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time: float | None = None

    def configure(self, config: OneEuroConfig | None) -> None:
        """Change the parameters without forgetting the state (a dial moved mid-stream)."""
        self.config = config

    def reset(self, value: np.ndarray | None = None, timestamp: float | None = None) -> None:
        """Forget the history, or restart it from `value` seen at `timestamp` (no jump from there)."""
        self._value = None if value is None else np.asarray(value, dtype=np.float32).copy()
        self._speed = None if value is None else np.zeros_like(self._value)
        self._time = timestamp

    def __call__(self, value: np.ndarray, timestamp: float) -> np.ndarray:
        """The filtered value of `value` observed at `timestamp` (seconds, increasing)."""
        value = np.asarray(value, dtype=np.float32)
        if self.config is None or self._value is None or self._time is None:
            self.reset(value, timestamp)
            return value.copy()
        dt = timestamp - self._time
        if dt <= 0.0:  # a repeated timestamp carries no new time: keep the estimate
            return self._value.copy()
        speed = (value - self._value) / dt
        self._speed = self._speed + _smoothing_factor(self.config.d_cutoff, dt) * (speed - self._speed)
        cutoff = self.config.min_cutoff + self.config.beta * np.abs(self._speed)
        self._value = self._value + _smoothing_factor(cutoff, dt) * (value - self._value)
        self._time = timestamp
        return self._value.astype(np.float32, copy=True)
