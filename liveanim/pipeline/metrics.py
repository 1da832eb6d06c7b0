"""How the live loop is doing: per-stage times, capture-to-output latency, fps, dropped frames;
and how the process is doing over a long run: memory, GPU memory, threads.

Written to by the loop's three threads, read by the GUI and a periodic log line. Figures
cover a sliding window of recent frames, so they show the present, not the average since
start (which hides a slowdown behind minutes of good frames).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveStats:
    """A snapshot of the loop.

    fps:            frames delivered to the outputs per second, over the window.
    latency_ms_*:   capture -> outputs written, median and 95th percentile, in ms.
    dropped:        frames dropped since start because a later stage was busy.
    stage_ms:       mean time of each stage over the window, in ms.
    frames:         frames delivered since start.
    """

    fps: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p95: float = 0.0
    dropped: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)
    frames: int = 0

    def line(self) -> str:
        """One line for the log."""
        stages = " ".join(f"{name} {ms:.1f}" for name, ms in self.stage_ms.items())
        return (f"{self.fps:.1f} fps, latency p50 {self.latency_ms_p50:.0f} ms p95 {self.latency_ms_p95:.0f} ms, "
                f"{self.frames} frames, {self.dropped} dropped | ms: {stages}")


@dataclass(frozen=True)
class MetricsConfig:
    """window: frames the figures are computed over; log_every_s: seconds between log lines (0: never)."""

    window: int = 120
    log_every_s: float = 10.0


class Metrics:
    """Thread-safe collector behind `LiveStats`."""

    def __init__(self, config: MetricsConfig = MetricsConfig()) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._stages: dict[str, deque[float]] = {}
        self._latency: deque[float] = deque(maxlen=config.window)
        self._delivered: deque[float] = deque(maxlen=config.window)
        self._frames = 0
        self._dropped = 0
        self._last_log = time.monotonic()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record_stage(name, time.perf_counter() - start)

    def record_stage(self, name: str, seconds: float) -> None:
        with self._lock:
            self._stages.setdefault(name, deque(maxlen=self.config.window)).append(seconds)

    def dropped(self, count: int = 1) -> None:
        with self._lock:
            self._dropped += count

    def delivered(self, captured_at: float) -> None:
        """A frame captured at `captured_at` (time.monotonic) reached every output."""
        now = time.monotonic()
        with self._lock:
            self._frames += 1
            self._latency.append(now - captured_at)
            self._delivered.append(now)
        self._maybe_log(now)

    def snapshot(self) -> LiveStats:
        with self._lock:
            latency = np.array(self._latency) * 1e3
            times = list(self._delivered)
            stages = {name: 1e3 * float(np.mean(values)) for name, values in self._stages.items() if values}
            frames, dropped = self._frames, self._dropped
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        p50, p95 = np.percentile(latency, [50, 95]) if latency.size else (0.0, 0.0)
        return LiveStats(fps=float(fps), latency_ms_p50=float(p50), latency_ms_p95=float(p95),
                         dropped=dropped, stage_ms=stages, frames=frames)

    def _maybe_log(self, now: float) -> None:
        if self.config.log_every_s <= 0 or now - self._last_log < self.config.log_every_s:
            return
        self._last_log = now
        log.info("live: %s", self.snapshot().line())


@dataclass(frozen=True)
class ProcessSample:
    """What a long run is watched for: memory or threads that grow.

    rss_mb:           resident memory of the process (None where /proc is missing: not Linux).
    threads:          the process's threads, native ones included (None without /proc).
    python_threads:   threads Python knows of.
    gpu_allocated_mb: tensors on the CUDA device (None without CUDA).
    gpu_reserved_mb:  what PyTorch's caching allocator holds from the device.
    """

    rss_mb: float | None
    threads: int | None
    python_threads: int
    gpu_allocated_mb: float | None
    gpu_reserved_mb: float | None


def sample_process(device: torch.device, status: Path = Path("/proc/self/status")) -> ProcessSample:
    """The figures of `ProcessSample` now."""
    fields: dict[str, str] = {}
    if status.is_file():
        for line in status.read_text().splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    rss_kb = fields.get("VmRSS", "").split()[:1]
    cuda = device.type == "cuda"
    return ProcessSample(
        rss_mb=int(rss_kb[0]) / 1024 if rss_kb else None,
        threads=int(fields["Threads"]) if "Threads" in fields else None,
        python_threads=threading.active_count(),
        gpu_allocated_mb=torch.cuda.memory_allocated(device) / 2**20 if cuda else None,
        gpu_reserved_mb=torch.cuda.memory_reserved(device) / 2**20 if cuda else None,
    )
