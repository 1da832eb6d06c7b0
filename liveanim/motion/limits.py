"""The one rule for the numbers that move the avatar, wherever a person types or loads them.

Dial and raw-direction offsets, group intensities and the smoothing amount must be finite
numbers within the ranges below. A value outside is refused where it enters, never
clamped: the command line exits with code 2 and names it, a preset is not loaded (the
window says why and keeps its dials), and a setting saved by an earlier run falls back to
its default with a warning. The window's sliders span exactly these ranges, so what they
show is what is used. A NaN is never "clamped" into a number that looks deliberate.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A closed interval of allowed values.

    low, high: the bounds, both allowed.
    """

    low: float
    high: float

    def check(self, value: object, what: str) -> float:
        """`value` as a float, or a ValueError naming `what` when it is not a finite number in range."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{what} must be a number from {self}, got {value!r}")
        number = float(value)
        if not (math.isfinite(number) and self.low <= number <= self.high):
            raise ValueError(f"{what} must be a number from {self}, got {number:g}")
        return number

    def __str__(self) -> str:
        return f"{self.low:g} to {self.high:g}"


@dataclass(frozen=True)
class Limits:
    """The documented range of each value.

    offset:    a dial's or raw direction's offset; the official examples stay within about
               -0.4..0.4, and further out the face distorts.
    intensity: a group's share of the performer's motion: 0 freezes it, 1 follows, 2 doubles.
    smoothing: 0 passes the motion through raw, 1 smooths it heavily.
    """

    offset: Range = Range(-0.5, 0.5)
    intensity: Range = Range(0.0, 2.0)
    smoothing: Range = Range(0.0, 1.0)


LIMITS = Limits()
