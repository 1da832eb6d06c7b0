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
    for them. It times each job from its submission to its end (its children's compiles, and any
    wait behind an earlier job, included), for the next start that compiles it: `progress` expects
    each job to end as long after its submission as it did then."""

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
        self._pending: list[tuple[str, float]] = []  # the jobs not ended yet: label, when submitted
        self._running: Children | None = None  # the children of the job under way
        # graphs asked for, ready and failed: a job counts one, or one per part its children
        # compile, and its count is complete only once it has ended
        self._graphs = self._graphs_finished = self._graphs_failed = 0
        self._parts_loaded = 0  # of the job under way, as its children end
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
        compiling = {self._children.submit(self._child.run, child, label + child.part_label()): (child, load)
                     for child, load in children if prefill.IN_CHILD and not self._closed}
        submitted = time.monotonic()
        with self._state:
            self._graphs += _graphs_of(compiling)
            self._pending.append((label, submitted))
        self._jobs.put((label, job, compiling, submitted))

    def run_here(self, label: str, job: Callable[[], T | None]) -> T | None:
        """Run `job()` on this thread instead (a saved graph loaded where it is called first); it
        counts as a job done only when it returns something. Its time is logged, not kept: it says
        nothing about a compile. A job that raises is logged, and None returned: the caller goes on
        as if it had found nothing."""
        started = time.monotonic()
        try:
            result = job()
        except Exception:
            log.warning("loading %s failed; it is prepared in the background instead", label, exc_info=True)
            return None
        if result is None:
            return None
        log.info("loaded %s in %.1f s", label, time.monotonic() - started)
        with self._state:
            self._graphs += 1
            self._graphs_finished += 1
            self._state.notify_all()
        return result

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted so far has finished; False on timeout."""
        with self._state:
            return self._state.wait_for(lambda: self._graphs_finished == self._graphs, timeout)

    def progress(self) -> OptimizingProgress:
        """Graphs ready and asked for, and the time left by the last start's measurements. The job
        under way counts the parts loaded so far, all but its last one: after the loads it still
        prepares the whole graph, and only its end makes the count complete."""
        with self._state:
            running = min(self._parts_loaded, _graphs_of(self._running) - 1) if self._running is not None else 0
            return OptimizingProgress(self._graphs_finished + running, self._graphs, self._graphs_failed,
                                      self._remaining_s(), first_time=self._times is None or not self._times.last)

    def close(self) -> None:
        """Skip the jobs not started yet and end a child process under way; an in-process compile
        under way finishes in the background."""
        self._closed = True
        self._child.stop()
        self._children.shutdown(wait=False, cancel_futures=True)
        self._jobs.put(None)

    def _remaining_s(self) -> float | None:
        """Under `_state`: seconds until the last of the jobs not ended yet is expected to end (each
        as long after its submission as the last time: the jobs' children run side by side, and a
        job that waits behind another waited then too); None where one was never measured."""
        last = self._times.last if self._times is not None else {}
        if not all(label in last for label, _ in self._pending):
            return None
        now = time.monotonic()
        return max([0.0] + [submitted + last[label] - now for label, submitted in self._pending])

    def _run(self) -> None:
        with torch.inference_mode(), contextlib.ExitStack() as scope:
            if self._device.type == "cuda":
                scope.enter_context(torch.cuda.device(self._device))
            while (item := self._jobs.get()) is not None:
                self._run_job(*item)

    def _run_job(self, label: str, job: Callable[[], None], children: Children, submitted: float) -> None:
        with self._state:
            self._running = children
            self._parts_loaded = 0
        failed = False
        try:
            if children:
                self._wait_for_children(label, children, submitted)
            if not self._closed:
                with _quick_handoffs():
                    job()
                seconds = time.monotonic() - submitted
                log.info("compiled %s in %.1f s since it was asked for", label, seconds)
                if self._times is not None:
                    self._times.record(label, seconds)
        except Exception:
            failed = True
            log.warning("compiling %s failed; it keeps running uncompiled (slower)", label, exc_info=True)
        finally:
            with self._state:
                self._pending.remove((label, submitted))
                self._running = None
                self._graphs_finished += _graphs_of(children)
                self._graphs_failed += _graphs_of(children) if failed else 0
                self._state.notify_all()

    def _wait_for_children(self, label: str, children: Children, submitted: float) -> None:
        """Wait for the job's child processes (started when the job was submitted), loading what
        each saved as it ends. A child that ran out of the GPU's memory beside the others is run
        again once they have ended: alone, it may fit, and a compile in this process would slow the
        frames for minutes."""
        failures: list[BaseException] = []
        retries: list[ChildJob] = []
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
            self._load(children[child][1])
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
            self._load(load)
        if self._closed:
            return
        where = "a separate process" if len(children) == 1 else f"{len(children)} separate processes"
        if failures:
            if len(children) > 1:
                where = f"{len(failures)} of {where}"
            log.warning("compiling %s in %s failed, so it is compiled in this one (slower frames meanwhile): %s",
                        label, where, "; ".join(map(str, failures)))
        else:
            log.info("compiled %s in %s in %.0f s", label, where, time.monotonic() - submitted)

    def _load(self, load: Callable[[], object]) -> None:
        """Load what a child saved, unless the engine was closed; a part of the job ready."""
        if self._closed:
            return
        with _quick_handoffs():
            load()
        with self._state:
            self._parts_loaded += 1


def _graphs_of(children: Children) -> int:
    """The graphs a job prepares, as the progress counts them: one per part that a child compiles,
    or the one graph it compiles in this process."""
    return max(len(children), 1)


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
