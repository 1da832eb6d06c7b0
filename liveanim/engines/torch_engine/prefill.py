"""Compiling a per-frame graph in a child process, so that the live process keeps its frame rate.

Inductor's first compile of a graph (lowering, code generation, Triton's compiles) takes minutes
on a fresh machine and holds Python's lock for most of it: on a thread of the live process it
dropped the live loop to 3-20 FPS for ~4 minutes on an H200. A child process compiles the same
graph instead and saves it in the engine cache (saved_graphs.py); the engine's compiler thread
waits for it without holding the lock, then loads it (1-4 s per graph on an H200). The children
of a start's graphs (the renderer's parts each their own, where it is compiled in parts) run
at once, as many as the machine holds, each with its share of the CPU's cores and at a lower
priority than the live process.

The child builds the graph through the engine itself (a `TorchEngine` of the same width,
precision, device, kernel forms and cache folder, called with inputs of the job's shape), with
placeholder weights, only those that its graph reads (placeholder.py). The job carries the
process-wide settings that the compiled code depends on and a process of ours may change (CPU
threads, the fp32 matmul precision: one test helper leaves it changed); the others
(deterministic algorithms, default dtype) stay PyTorch's defaults in both.

    python -m liveanim.engines.torch_engine.prefill '<PrefillJob as JSON>'

exits 0 once the graph is compiled; it logs to stderr and prints nothing on stdout. Where its
stdin is a pipe (`ChildCompiler` holds the other end and never writes), it exits once that pipe
closes: its parent ended, however it ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import torch

from liveanim.model.decoder import STAGE_NAMES

log = logging.getLogger(__name__)

# The per-frame graphs, by the names in the log, the compile times and a child's compile job.
MOTION_GRAPH, RENDER_GRAPH = "motion encoder", "renderer"

# False: compile in the live process as before (the frames slow down for those minutes); for
# benchmarks that compare both ways (scripts/start_timeline.py), like backend.TRITON_CONV.
IN_CHILD = True
# A child still compiling after this long is ended, and the graph compiled in-process.
TIMEOUT_S = 20 * 60.0
TAIL_LINES = 6  # of the child's output, in the warning when it fails
MAX_CHILDREN = 8  # children at once (`child_slots`): a live start's graphs, the renderer's parts each (backend.render_parts)
CORES_PER_CHILD = 2
CHILD_NICENESS = 10
# A child's GPU memory: the weights its graph reads and this much for the rest (CUDA's context, the
# graph's inputs and activations, Inductor's benchmarks). On an H200, children that each held the
# whole model (2.15 GB folded, full width, fp16) took 3.8 GB each: 11.9 GB in use with 2 of them,
# 34.8 GB with 8 (1.65 GB besides the model; rounded up). The live process keeps GPU_HEADROOM_BYTES
# free besides.
CHILD_WORKSPACE_BYTES = 7 << 28
GPU_HEADROOM_BYTES = 2 << 30
CHILD_MEMORY_BYTES = 3 << 30  # a child's own memory: PyTorch, Inductor and its compile workers
_STOP_WAIT_S = 5.0  # for a stopped child to end before it is killed


@dataclass(frozen=True)
class PrefillJob:
    """What a child process needs to compile exactly the graph the engine compiles.

    graph:       the engine's name of the graph ('motion encoder' or 'renderer').
    shape:       the shape of its input, batch first ((1, 3, 512, 512); the renderer's (1, L)).
    width:       the model's width (2.0: the released model).
    precision:   'fp32', 'fp16' or 'bf16', as the engine resolved it.
    device:      the engine's device, e.g. 'cuda'.
    triton_conv: backend.TRITON_CONV when the engine was made: it picks the kernel forms.
    cache_dir:   the engine's cache folder, where the graph is saved; None: the user's cache.
    part:        the renderer's part to compile, as decoder stages (first, stop)
                 (`backend.render_parts`); None for the motion encoder.
    threads, matmul_precision: this process's settings, taken when the job is made, that the
                 compiled code depends on: torch.get_num_threads() (the CPU's C++ kernels are
                 made for it) and torch.backends.cuda.matmul.fp32_precision (None before PyTorch 2.9).
    """

    graph: str
    shape: tuple[int, ...]
    width: float
    precision: str
    device: str
    triton_conv: bool
    cache_dir: str | None = None
    part: tuple[int, int] | None = None
    threads: int = field(default_factory=torch.get_num_threads)
    matmul_precision: str | None = field(
        default_factory=lambda: getattr(torch.backends.cuda.matmul, "fp32_precision", None))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PrefillJob:
        fields = json.loads(text)
        part = tuple(fields["part"]) if fields.get("part") is not None else None
        return cls(**{**fields, "shape": tuple(fields["shape"]), "part": part})

    def part_label(self) -> str:
        """The renderer's part in the log, after the graph's name ('' for a whole graph)."""
        stages = stages_label(self.part)
        return f" ({stages})" if stages else ""


def stages_label(part: tuple[int, int] | None) -> str:
    """A part of the renderer by its decoder stages ('stage 3', 'stages 0-1'); '' for a whole graph."""
    if part is None or tuple(part) == (0, len(STAGE_NAMES)):
        return ""
    first, stop = part
    return f"stage {first}" if stop == first + 1 else f"stages {first}-{stop - 1}"


class ChildFailed(Exception):
    """The child process ended without compiling its graph; the message says why.

    out_of_memory: it ran out of the GPU's memory (PyTorch's error said so), which the children
                   beside it may have taken: alone, it may fit.
    """

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory


class ChildCompiler:
    """Runs `PrefillJob`s in child processes, up to `slots` at once; `stop` ends those under way."""

    def __init__(self, slots: int = 1) -> None:
        """slots: children at once (`child_slots`); the others wait for one to end."""
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()  # guards the two below
        self._processes: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, job: PrefillJob, label: str) -> None:
        """Compile `job` in a child process and wait for it (without Python's lock), after waiting
        for a free slot.

        label: names the graph in the log, as the engine's compiler does.
        Raises ChildFailed with the cause and the last lines of the child's output.
        """
        with self._free, tempfile.TemporaryFile() as output:
            process = self._start(job, output)
            log.info("compiling %s in a separate process (pid %d)", label, process.pid)
            try:
                code = process.wait(TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _end(process)
                raise ChildFailed(f"it did not finish in {TIMEOUT_S:.0f} s{_tail(_text(output))}") from None
            finally:
                process.stdin.close()
                with self._lock:
                    self._processes.discard(process)
            if code != 0:
                text = _text(output)
                raise ChildFailed(f"it ended with {_exit_cause(code)}{_tail(text)}", ran_out_of_memory(text))

    def stop(self) -> None:
        """End the children under way, with their own processes (Inductor's compile workers), and
        start no other."""
        with self._lock:
            self._stopped = True
            for process in self._processes:
                _end(process)

    def _start(self, job: PrefillJob, output: IO[bytes]) -> subprocess.Popen:
        with self._lock:
            if self._stopped:
                raise ChildFailed("the engine was closed")
            try:  # a session of its own: its compile workers are ended with it
                process = subprocess.Popen(
                    [sys.executable, "-m", __spec__.name, job.to_json()], stdin=subprocess.PIPE,
                    stdout=output, stderr=output, env=_environment(self.slots), start_new_session=True)
            except OSError as error:
                raise ChildFailed(f"it could not start ({error})") from None
            self._processes.add(process)
            return process


def child_slots(device: torch.device, weight_bytes: int, graphs: int = MAX_CHILDREN) -> int:
    """How many children may compile at once here: two CPU cores each (Inductor's code generation
    is one thread per child; Triton's compiles share the rest), as many as the free memory and the
    GPU's free memory hold next to this process (a child holds at most `weight_bytes` of weights,
    the largest graph's), and one per graph a start compiles at most (`graphs`, up to
    `MAX_CHILDREN`): the cores are shared out among the slots, so a slot no graph needs would only
    take compile workers from the others."""
    slots = min(graphs, MAX_CHILDREN, max(1, (os.cpu_count() or 1) // CORES_PER_CHILD))
    available = available_memory()
    if available is not None:
        slots = min(slots, max(1, available // CHILD_MEMORY_BYTES))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        needs = weight_bytes + CHILD_WORKSPACE_BYTES
        slots = min(slots, max(1, int((free - GPU_HEADROOM_BYTES) // needs)))
    return slots


def available_memory() -> int | None:
    """The memory that processes can still take without swapping (Linux's MemAvailable); None
    where the system does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _environment(slots: int) -> dict[str, str]:
    """This process's environment (Inductor's cache folders among it), with this package importable
    from wherever this process found it (a script may have put it on sys.path), and Inductor's
    compile workers shared out among `slots` children (each would start one per core)."""
    root = str(Path(__file__).resolve().parents[3])
    workers = str(max(1, (os.cpu_count() or 1) // slots))
    return {"TORCHINDUCTOR_COMPILE_THREADS": workers, **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def _end(process: subprocess.Popen) -> None:
    """Stop `process` and the processes of its session, and reap it."""
    if process.poll() is not None:
        return
    _signal(process, signal.SIGTERM)
    try:
        process.wait(_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        process.wait()


def _signal(process: subprocess.Popen, number: int) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, number)
        else:
            process.send_signal(number)
    except ProcessLookupError:
        pass  # ended meanwhile


def _exit_cause(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def _text(output: IO[bytes]) -> str:
    """What the child wrote."""
    output.seek(0)
    return output.read().decode(errors="replace")


def _tail(text: str) -> str:
    """The last lines the child wrote, to quote after the cause."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "; its last output:\n" + "\n".join(lines[-TAIL_LINES:]) if lines else " (no output)"


def ran_out_of_memory(text: str) -> bool:
    """Whether a child's output says that it ran out of the GPU's memory: PyTorch's error
    ("torch.OutOfMemoryError: CUDA out of memory"), or Triton's where it loads a kernel."""
    return "OutOfMemoryError" in text or "out of memory" in text.lower()


def compile_graph(job: PrefillJob) -> None:
    """Compile and save the graph `job` names the way the live process's engine does."""
    from liveanim.engines.torch_engine import backend
    from liveanim.engines.torch_engine.placeholder import PlaceholderEngine

    torch.set_num_threads(job.threads)
    if job.matmul_precision is not None:
        torch.backends.cuda.matmul.fp32_precision = job.matmul_precision
    backend.TRITON_CONV = job.triton_conv
    engine = PlaceholderEngine(job)
    try:
        engine.compile_job()
    finally:
        engine.close()


def _exit_with_parent() -> None:
    """End this process soon after its parent ends (killed, crashed): a compile nobody waits for
    would hold a GPU and CPU cores for minutes. The parent holds the only writing end of this
    process's stdin pipe; the system closes it when the parent ends, on every platform, and the
    read here then returns (a parent's pid is no such sign: on Windows it does not change). The
    read goes to the descriptor, not to `sys.stdin`, whose lock a reading thread would hold when
    the interpreter shuts down (a fatal error)."""
    descriptor = sys.stdin.fileno() if sys.stdin is not None else None
    if descriptor is None or not stat.S_ISFIFO(os.fstat(descriptor).st_mode):
        return  # run by hand: no parent to follow

    def watch() -> None:
        with contextlib.suppress(OSError):  # a broken pipe is the same news
            while os.read(descriptor, 4096):
                pass
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    _exit_with_parent()
    if hasattr(os, "nice"):
        os.nice(CHILD_NICENESS)  # the live process first when the cores are short (its compile workers too)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    job = PrefillJob.from_json(argv[0])
    started = time.monotonic()
    compile_graph(job)
    log.info("compiled the %s for input %s in %.0f s", job.graph + job.part_label(), job.shape, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
