"""From raw driving codes to the motion the renderer gets, frame after frame.

    motion = filter(a_d - a_0) * intensity        (the face is seen)
    motion = held * (1 - ease(t - t_lost - hold))  (the face is lost)

and the dials' edit vector `e` travels beside it: `z_target = z_s + (motion + a_s + e) @ Q.T`.
When the face is lost the avatar keeps its last expression for a moment (a blink of the
tracker must not make it twitch), then glides back to its own rest pose; it never shows a
frame made from a crop without a face.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

import numpy as np

from liveanim.motion.dials import MOTION_DIM, full_intensity, group_scale
from liveanim.motion.filters import OneEuroFilter, SmoothingRange
from liveanim.motion.neutral import NeutralConfig, NeutralReference


@dataclass(frozen=True)
class MotionConfig:
    """How driving codes become motion.

    neutral:   when the reference pose a_0 is captured.
    smoothing: initial amount in [0, 1]: 0 passes codes through raw, 1 smooths heavily.
    range:     what the smoothing amount means in One Euro terms.
    hold_s:    seconds the last motion is held after the face is lost.
    ease_s:    seconds over which it then eases back to zero (the avatar's rest pose).
    """

    neutral: NeutralConfig = NeutralConfig()
    smoothing: float = 0.5
    range: SmoothingRange = SmoothingRange()
    hold_s: float = 0.5
    ease_s: float = 1.0

    def __post_init__(self) -> None:
        if self.hold_s < 0 or self.ease_s < 0:
            raise ValueError(f"hold_s and ease_s must be >= 0, got {self.hold_s} and {self.ease_s}")
        self.range.at(self.smoothing)  # validates the amount


@dataclass(frozen=True, eq=False)
class Dials:
    """What the person sets while the avatar moves, as one value: the window keeps one and hands
    it whole to every session it opens (another camera, another engine), which applies it at once.

    edit:      (motion_dim,) offsets e of the dictionary directions, kept as a read-only float32 copy.
    intensity: {'head' | 'mouth' | 'eyes': factor}; 1 follows the performer (a group not given), 0 freezes it.
    smoothing: 0 passes the motion through raw, 1 smooths it heavily.
    The values are checked where they are applied (`MotionController.set_dials`).
    """

    edit: np.ndarray = field(default_factory=lambda: np.zeros(MOTION_DIM, dtype=np.float32))
    intensity: Mapping[str, float] = field(default_factory=full_intensity)
    smoothing: float = MotionConfig.smoothing

    def __post_init__(self) -> None:
        edit = np.array(self.edit, dtype=np.float32)
        edit.flags.writeable = False
        object.__setattr__(self, "edit", edit)
        object.__setattr__(self, "intensity", MappingProxyType({**full_intensity(), **self.intensity}))

    def with_edit(self, edit: np.ndarray) -> Dials:
        return replace(self, edit=edit)

    def with_intensity(self, group: str, value: float) -> Dials:
        return replace(self, intensity={**self.intensity, group: value})

    def with_smoothing(self, amount: float) -> Dials:
        return replace(self, smoothing=amount)


def _ease_out(progress: float) -> float:
    """1 -> 0 smoothly (zero slope at both ends) as progress goes 0 -> 1."""
    x = min(max(progress, 0.0), 1.0)
    return 1.0 - x * x * (3.0 - 2.0 * x)


class MotionController:
    """Turns per-frame codes a_d (or None when no face is seen) into the motion to render.

    Not thread-safe: one thread calls `update`; the owner serializes the setters with it.
    """

    def __init__(self, config: MotionConfig = MotionConfig(), motion_dim: int = MOTION_DIM) -> None:
        self.config = config
        self._neutral = NeutralReference(config.neutral)
        self._filter = OneEuroFilter(config.range.at(config.smoothing))
        self._dials = Dials(edit=np.zeros(motion_dim, dtype=np.float32), smoothing=config.smoothing)
        self._scale = np.ones(motion_dim, dtype=np.float32)
        self._last = np.zeros(motion_dim, dtype=np.float32)  # the last motion, before intensity
        self._last_time: float | None = None
        self._lost_since: float | None = None
        self._held = self._last

    @property
    def dials(self) -> Dials:
        return self._dials

    @property
    def edit(self) -> np.ndarray:
        """The dials' offsets e (motion_dim,), added to the avatar's own code."""
        return self._dials.edit.copy()

    @property
    def intensity(self) -> dict[str, float]:
        return dict(self._dials.intensity)

    @property
    def neutral(self) -> np.ndarray | None:
        """The reference code a_0, or None before a face was seen."""
        return self._neutral.value

    def set_dials(self, dials: Dials) -> None:
        """All the dials at once, checked first: a ValueError changes none of them. Smoothing
        takes effect at once, without a jump."""
        if dials.edit.shape != self._scale.shape:
            raise ValueError(f"the edit vector needs {self._scale.shape[0]} numbers, got shape {dials.edit.shape}")
        scale = group_scale(dials.intensity, self._scale.shape[0])  # raises on an unknown group or value
        smoothing = self.config.range.at(dials.smoothing)
        self._filter.configure(smoothing)
        self._scale, self._dials = scale, dials

    def set_edit(self, edit: np.ndarray) -> None:
        self.set_dials(self._dials.with_edit(edit))

    def set_intensity(self, group: str, value: float) -> None:
        """Scale the motion of one dial group ('head', 'mouth', 'eyes'); 0 freezes it."""
        self.set_dials(self._dials.with_intensity(group, float(value)))

    def set_smoothing(self, amount: float) -> None:
        """0 = raw codes, 1 = heavy smoothing."""
        self.set_dials(self._dials.with_smoothing(amount))

    def calibrate(self) -> None:
        """Take the neutral pose again from the next still frames."""
        self._neutral.calibrate()

    def update(self, code: np.ndarray | None, timestamp: float) -> np.ndarray:
        """The motion (motion_dim,) for a frame captured at `timestamp` s; code None = no face."""
        motion = self._lost(timestamp) if code is None else self._seen(code, timestamp)
        self._last, self._last_time = motion, timestamp
        return motion * self._scale

    def _seen(self, code: np.ndarray, timestamp: float) -> np.ndarray:
        if self._lost_since is not None:  # glide on from wherever the easing had got to
            self._filter.reset(self._last, self._last_time)
            self._lost_since = None
        relative = np.asarray(code, dtype=np.float32) - self._neutral.observe(code)
        return self._filter(relative, timestamp)

    def _lost(self, timestamp: float) -> np.ndarray:
        if self._lost_since is None:
            self._lost_since, self._held = timestamp, self._last
            self._neutral.interrupt()
        elapsed = timestamp - self._lost_since - self.config.hold_s
        if elapsed <= 0.0:
            return self._held
        progress = elapsed / self.config.ease_s if self.config.ease_s > 0 else 1.0
        return (self._held * _ease_out(progress)).astype(np.float32)
