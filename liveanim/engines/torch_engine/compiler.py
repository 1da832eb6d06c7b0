"""Compiling the per-frame graphs without making callers wait: one background thread prepares the
compiled graph for each input shape while the uncompiled one serves the calls."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Callable

import torch

from liveanim.engines.torch_engine.batching import GraphFn, ShapeKey, shape_key
from liveanim.engines.torch_engine.cuda_graphs import GraphReplay

log = logging.getLogger(__name__)


def _finish_gpu_work(tensors: tuple[torch.Tensor, ...]) -> None:
    """Wait for this thread's stream: the tensors are read on another one next."""
    if tensors[0].is_cuda:
        torch.cuda.current_stream(tensors[0].device).synchronize()


class BackgroundCompiler:
    """One thread that prepares compiled graphs, one job at a time (Dynamo compiles one graph
    at a time anyway), so that callers need not wait for them."""

    def __init__(self, device: torch.device):
        self._device = device
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._unfinished = 0
        self._idle = threading.Condition()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job()` on the compiler thread (started on the first job), in inference mode."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="engine-compiler", daemon=True)
            self._thread.start()
        with self._idle:
            self._unfinished += 1
        self._jobs.put(job)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted so far has finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def close(self) -> None:
        """Skip the jobs not started yet; one that runs finishes in the background."""
        self._closed = True
        self._jobs.put(None)

    def _run(self) -> None:
        with torch.inference_mode(), contextlib.ExitStack() as scope:
            if self._device.type == "cuda":
                scope.enter_context(torch.cuda.device(self._device))
            while (job := self._jobs.get()) is not None:
                try:
                    if not self._closed:
                        job()
                finally:
                    with self._idle:
                        self._unfinished -= 1
                        self._idle.notify_all()


class CompiledWhenReady:
    """Calls the compiled graph for the input shapes it is ready for; any other shape goes to
    `interim` while the background compiler prepares the compiled graph for it (compiles or
    loads it, and captures its CUDA graph). A failed preparation leaves that shape on `interim`.

    The compiled graph is made by `make_compiled()`, on the compiler thread: making it imports
    the compiler (seconds). A shape is prepared from its second call on, so that the compiler
    thread does not slow down the first, which captures the interim graph (the live loop's warm-up).
    """

    def __init__(self, make_compiled: Callable[[], GraphFn], interim: GraphFn, compiler: BackgroundCompiler):
        self._make_compiled = make_compiled
        self._compiled: GraphFn | None = None
        self._interim = interim
        self._compiler = compiler
        self._ready: set[ShapeKey] = set()  # added to by the compiler thread
        self._calls: dict[ShapeKey, int] = {}
        self._released: set[ShapeKey] = set()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = shape_key(args)
        if key in self._ready:
            assert self._compiled is not None
            if key not in self._released and isinstance(self._interim, GraphReplay):
                self._interim.release(key)  # here, not on the compiler thread: no replay of it is under way
            self._released.add(key)
            return self._compiled(*args)
        self._calls[key] = calls = self._calls.get(key, 0) + 1
        if calls == 2:
            example = tuple(a.clone() for a in args)
            _finish_gpu_work(example)  # the compiler thread reads the copies on another stream
            self._compiler.submit(lambda: self._prepare(key, example))
        return self._interim(*args)

    def _prepare(self, key: ShapeKey, example: tuple[torch.Tensor, ...]) -> None:
        shapes = [shape for shape, _ in key]
        started = time.monotonic()
        try:
            if self._compiled is None:
                self._compiled = self._make_compiled()
            self._compiled(*example)
            _finish_gpu_work(example)  # before the copies are freed
        except Exception:
            log.warning("compiling the graph for inputs %s failed; it keeps running uncompiled (slower)",
                        shapes, exc_info=True)
            return
        self._ready.add(key)
        log.info("compiled graph for inputs %s ready after %.0f s: full speed from now on",
                 shapes, time.monotonic() - started)
