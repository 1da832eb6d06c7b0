"""Compiling the per-frame graphs without making callers wait: one background thread prepares the
compiled graph for each input shape while the uncompiled one serves the calls, unless the graph
was saved by an earlier start: then it is loaded where it is first called.

Inductor holds Python's lock for most of a compile, so on a fresh machine a compile on that thread
alone slowed the callers (the live loop: 3-20 FPS for ~4 minutes on an H200). So a job whose graph
is not saved yet (saved_graphs.py) first has it compiled and saved by a child process (prefill.py)
while the thread only waits; then the thread loads it. The children of the jobs submitted run at
once, up to the slots the machine has, and the thread loads what each saved as it ends, while the
others still compile. While the thread loads, Python hands its lock over more often
(`_quick_handoffs`), so that the callers keep their pace."""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from liveanim.engines.base import OptimizingProgress
from liveanim.engines.torch_engine import prefill
from liveanim.engines.torch_engine.batching import GraphFn, ShapeKey, shape_key
from liveanim.engines.torch_engine.compile_times import CompileTimes
from liveanim.engines.torch_engine.cuda_graphs import GraphReplay
from liveanim.engines.torch_engine.prefill import ChildCompiler, ChildFailed, PrefillJob

log = logging.getLogger(__name__)
T = TypeVar("T")
# A graph (or part of one) for a child process to compile and save, and the call that loads it.
ChildJob = tuple[PrefillJob, Callable[[], object]]
# The children of a job under way, each with its job and the call that loads what it saves.
Children = dict[Future, ChildJob]

# Python's lock goes to a waiting thread after this long (its default: 5 ms) while the compiler
# thread loads a graph. The live loop gives the lock up dozens of times a frame (GPU waits, numpy,
# OpenCV) and waited up to 5 ms for it each time: 3-9 FPS while a graph loaded on an H200.
HANDOFF_S = 0.0002


def _finish_gpu_work(tensors: tuple[torch.Tensor, ...]) -> None:
    """Wait for this thread's stream: the tensors are read on another one next."""
    if tensors[0].is_cuda:
        torch.cuda.current_stream(tensors[0].device).synchronize()


class BackgroundCompiler:
    """One thread that prepares compiled graphs, one job at a time, so that callers need not wait
    for them. It times each job's in-process part (what a later start takes), for the progress
    shown meanwhile (`progress`) and, through `times`, for the next start's estimate."""

    def __init__(self, device: torch.device, times: CompileTimes | None = None, child_slots: int = 1):
        """child_slots: child processes at once (`prefill.child_slots`)."""
        self._device = device
        self._times = times
        self._jobs: queue.Queue[tuple[str, Callable[[], None], Children, float] | None] = queue.Queue()
        self._child = ChildCompiler(child_slots)
        # threads that wait for the children (without Python's lock): one per child that can be asked for
        self._children = ThreadPoolExecutor(prefill.MAX_CHILDREN, thread_name_prefix="engine-child")
        self._thread: threading.Thread | None = None
        self._state = threading.Condition()  # guards the counts below
        self._queued: list[str] = []  # labels of the jobs not started yet
        self._running: tuple[str, float] | None = None  # the job under way, and when it started
        self._submitted = self._finished = self._failed = 0
        self._closed = False

    def submit(self, label: str, job: Callable[[], None], children: Sequence[ChildJob] = ()) -> None:
        """Run `job()` on the compiler thread (started on the first job), in inference mode.

        label:    names the job in the log and in the measured times, the same on every start
                  (e.g. 'renderer [(1, 512)]'). A job that raises is logged, and its graph keeps
                  running uncompiled.
        children: the graphs (or parts of one) that `job` prepares, to compile and save in child
                  processes first (`prefill.IN_CHILD`), started now, each with the call that loads
                  what its child saved: the thread makes it as the child ends, before `job`. A child
                  that fails is logged, and `job` compiles what it did not.
        """
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="engine-compiler", daemon=True)
            self._thread.start()
        with self._state:
            self._submitted += 1
            self._queued.append(label)
        compiling = {self._children.submit(self._child.run, child, label + child.part_label()): (child, load)
                     for child, load in children if prefill.IN_CHILD and not self._closed}
        self._jobs.put((label, job, compiling, time.monotonic()))

    def run_here(self, label: str, job: Callable[[], T | None]) -> T | None:
        """Run `job()` on this thread instead (a saved graph loaded where it is called first); it
        counts as a job done, and is timed like one, only when it returns something. A job that
        raises is logged, and None returned: the caller goes on as if it had found nothing."""
        started = time.monotonic()
        try:
            result = job()
        except Exception:
            log.warning("loading %s failed; it is prepared in the background instead", label, exc_info=True)
            return None
        if result is None:
            return None
        self._done_in("loaded", label, started)
        with self._state:
            self._submitted += 1
            self._finished += 1
            self._state.notify_all()
        return result

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted so far has finished; False on timeout."""
        with self._state:
            return self._state.wait_for(lambda: self._finished == self._submitted, timeout)

    def progress(self) -> OptimizingProgress:
        """Jobs finished and asked for, and the time left by the last start's measurements."""
        with self._state:
            return OptimizingProgress(self._finished, self._submitted, self._failed, self._remaining_s(),
                                      first_time=self._times is None or not self._times.last)

    def close(self) -> None:
        """Skip the jobs not started yet and end a child process under way; an in-process compile
        under way finishes in the background."""
        self._closed = True
        self._child.stop()
        self._children.shutdown(wait=False, cancel_futures=True)
        self._jobs.put(None)

    def _remaining_s(self) -> float | None:
        """Under `_state`: the last start's time of each job still to come, less what the running
        one has taken so far; None where one of them was never measured."""
        last = self._times.last if self._times is not None else {}
        labels = self._queued + ([self._running[0]] if self._running else [])
        if not all(label in last for label in labels):
            return None
        running = last[self._running[0]] - (time.monotonic() - self._running[1]) if self._running else 0.0
        return max(running, 0.0) + sum(last[label] for label in self._queued)

    def _run(self) -> None:
        with torch.inference_mode(), contextlib.ExitStack() as scope:
            if self._device.type == "cuda":
                scope.enter_context(torch.cuda.device(self._device))
            while (item := self._jobs.get()) is not None:
                self._run_job(*item)

    def _run_job(self, label: str, job: Callable[[], None], children: Children, submitted: float) -> None:
        with self._state:
            self._queued.remove(label)
            self._running = (label, time.monotonic())
        failed = False
        try:
            loading = self._wait_for_children(label, children, submitted) if children else 0.0
            if not self._closed:
                started = time.monotonic()
                with _quick_handoffs():
                    job()
                # what the next start takes in this process (it loads every graph; no children then)
                self._done_in("compiled", label, started - loading)
        except Exception:
            failed = True
            log.warning("compiling %s failed; it keeps running uncompiled (slower)", label, exc_info=True)
        finally:
            with self._state:
                self._running = None
                self._finished += 1
                self._failed += failed
                self._state.notify_all()

    def _done_in(self, verb: str, label: str, started: float) -> None:
        """Log how long a job took since `started`, and keep it for the next start's estimates."""
        seconds = time.monotonic() - started
        log.info("%s %s in %.1f s", verb, label, seconds)
        if self._times is not None:
            self._times.record(label, seconds)

    def _wait_for_children(self, label: str, children: Children, submitted: float) -> float:
        """Wait for the job's child processes (started when the job was submitted), loading what
        each saved as it ends; the seconds spent loading. A child that ran out of the GPU's memory
        beside the others is run again once they have ended: alone, it may fit, and a compile in
        this process would slow the frames for minutes."""
        failures: list[BaseException] = []
        retries: list[ChildJob] = []
        loading = 0.0
        for child in as_completed(children):
            try:
                child.result()
            except ChildFailed as failure:
                if failure.out_of_memory:
                    retries.append(children[child])
                else:
                    failures.append(failure)
                continue
            except CancelledError as failure:  # the engine was closed
                failures.append(failure)
                continue
            loading += self._load(children[child][1])
        for job, load in retries:
            if self._closed:
                break
            log.info("compiling %s again in a separate process, alone: it ran out of GPU memory beside the others",
                     label + job.part_label())
            try:
                self._child.run(job, label + job.part_label())
            except ChildFailed as failure:
                failures.append(failure)
                continue
            loading += self._load(load)
        if self._closed:
            return loading
        where = "a separate process" if len(children) == 1 else f"{len(children)} separate processes"
        if failures:
            if len(children) > 1:
                where = f"{len(failures)} of {where}"
            log.warning("compiling %s in %s failed, so it is compiled in this one (slower frames meanwhile): %s",
                        label, where, "; ".join(map(str, failures)))
        else:
            log.info("compiled %s in %s in %.0f s", label, where, time.monotonic() - submitted)
        return loading

    def _load(self, load: Callable[[], object]) -> float:
        """Load what a child saved, unless the engine was closed; the seconds it took."""
        if self._closed:
            return 0.0
        started = time.monotonic()
        with _quick_handoffs():
            load()
        return time.monotonic() - started


@contextlib.contextmanager
def _quick_handoffs() -> Iterator[None]:
    """Python's lock handed between threads every `HANDOFF_S` meanwhile; process-wide, and only
    the compiler thread changes it."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(HANDOFF_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class CompiledWhenReady:
    """Calls the compiled graph for the input shapes it is ready for. At the first call of a
    shape, a saved graph (saved_graphs.py) is loaded on the caller's thread: seconds, and full
    speed from that frame on. Without one, the shape goes to `interim` while the background
    compiler prepares the compiled graph for it (its first call there compiles it, or loads what a
    child process compiled, and captures its CUDA graph). A failed preparation leaves that shape on
    `interim`. A shape is prepared from its second call on, so that the compiler thread does not
    slow down the first, which captures the interim graph (the live loop's warm-up).
    """

    def __init__(self, name: str, compiled: GraphFn, interim: GraphFn, compiler: BackgroundCompiler,
                 children: Callable[[torch.Tensor], Sequence[ChildJob]] = lambda x: (),
                 load_saved: Callable[[torch.Tensor], bool] = lambda x: False):
        """name:       the graph, for the compiler's job labels (e.g. 'renderer').
        children:   the child processes that compile this graph for inputs like the one given
                    first, one per part not loaded yet, each with the call that loads its part;
                    none: compiled in this process only.
        load_saved: loads the saved compiled graph for an input like this one, if there is a
                    usable one, and says whether it did (never compiles)."""
        self._name = name
        self._children = children
        self._load_saved = load_saved
        self._compiled = compiled
        self._interim = interim
        self._compiler = compiler
        self._ready: set[ShapeKey] = set()  # added to by the compiler thread
        self._calls: dict[ShapeKey, int] = {}
        self._released: set[ShapeKey] = set()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = shape_key(args)
        if key in self._ready:
            if key not in self._released and isinstance(self._interim, GraphReplay):
                self._interim.release(key)  # here, not on the compiler thread: no replay of it is under way
            self._released.add(key)
            return self._compiled(*args)
        label = f"{self._name} {[shape for shape, _ in key]}"
        if key not in self._calls:
            output = self._compiler.run_here(label, lambda: self._loaded(key, args))
            if output is not None:
                return output
        self._calls[key] = calls = self._calls.get(key, 0) + 1
        if calls == 2:
            example = tuple(a.clone() for a in args)
            _finish_gpu_work(example)  # the compiler thread reads the copies on another stream
            self._compiler.submit(label, lambda: self._prepare(key, example), self._children(args[0]))
        return self._interim(*args)

    def _loaded(self, key: ShapeKey, args: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        """The compiled graph's output, where its saved graph loaded (None: there is none)."""
        if not self._load_saved(args[0]):
            return None
        output = self._compiled(*args)  # its CUDA graph is captured here
        self._ready.add(key)
        self._released.add(key)  # no interim graph was made for it
        return output

    def _prepare(self, key: ShapeKey, example: tuple[torch.Tensor, ...]) -> None:
        self._compiled(*example)
        _finish_gpu_work(example)  # before the copies are freed
        self._ready.add(key)
