"""Compiled per-frame graphs kept on disk and loaded without tracing.

torch.compile traces its function with Dynamo on every start, even when Inductor's cache holds the
compiled code: 9-19 s per graph on an H200, with Python's lock held (the live loop fell to 11-19
FPS meanwhile). Here a graph is exported once (`torch.export`: every weight and buffer becomes an
input with its name), compiled by Inductor (`standalone_compile`) and saved as one file in the
engine cache, beside the names of its inputs. A later start loads that file (1-4 s per graph on an
H200) and calls it with the module's tensors of those names.

A file's name holds a digest of everything its code depends on: the engine's compile key (GPU,
PyTorch, precision, width, kernel forms), the graph and its input's shape, layout and dtype, the
process settings Inductor compiles for, our own Inductor settings (`INDUCTOR_SETTINGS`), Triton's
version and the model's source code. A file that cannot be used (unreadable, another PyTorch's,
inputs the module lacks) is compiled again.
Saved graphs unused for `UNUSED_DAYS` are removed when another one is saved.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import torch
from torch import nn
from torch.export.graph_signature import InputKind

import liveanim.model
from liveanim.engines.torch_engine.batching import ShapeKey, shape_key
from liveanim.files import write_atomically

log = logging.getLogger(__name__)

GRAPHS_DIR = Path("torch") / "graphs"
# A saved graph neither loaded nor saved for this long is removed when another is saved: each new
# PyTorch, GPU model, precision or model version leaves files behind (~180 MB for both graphs at
# full width in fp16) that nothing would read again.
UNUSED_DAYS = 30
_WEIGHTS = (InputKind.PARAMETER, InputKind.BUFFER)
# Inductor's settings for our graphs, besides its defaults. Pointwise kernels get Inductor's one
# heuristic block size instead of 2-3 benchmarked at their first run: fewer Triton compiles, and no
# GPU benchmarks in the child, which slowed the live frames beside it. On an H200 the renderer's
# child compiled in 94-114 s instead of 128 s on a first start (99 s instead of 152 s with 7
# compiles at once), and the frames were as fast (docs/performance.md).
INDUCTOR_SETTINGS = {"triton.autotune_pointwise": False}


@functools.cache
def model_code_digest() -> str:
    """The model's source code, in short: a compiled graph is the code it was traced from."""
    digest = hashlib.sha256()
    for path in sorted(Path(liveanim.model.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _triton_version() -> str | None:
    """Triton's version: the saved kernels are its binaries, launched through its runtime."""
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def import_loader() -> None:
    """Import the code that loads a saved graph (Inductor's compile and load modules, ~2-3 s)
    before the first frame. Imported at the first load instead, it held Python's lock while the
    frames ran: on a first start on an H200 machine the motion encoder's load took 4.1 s, the loop
    fell to 8 FPS, and now it takes 0.8 s without a dip (the engine is ready ~3.5 s later). On a
    later start it is part of the first frame's wait either way (6.3-7.0 s against 6.4-11.5 s)."""
    import torch._inductor.compile_fx  # noqa: F401
    import torch._inductor.standalone_compile  # noqa: F401


class GraphStore:
    """The folder of saved graphs for one engine's compile key (`compile_times.compile_key`)."""

    def __init__(self, folder: Path, compile_key: str):
        self.folder = folder
        self.compile_key = compile_key

    def path(self, graph: str, example: torch.Tensor) -> Path:
        """The file of `graph` compiled for inputs like `example` (its first input) in this process."""
        fields = {
            "compile_key": self.compile_key, "graph": graph, "shape": list(example.shape),
            "stride": list(example.stride()), "dtype": str(example.dtype), "threads": torch.get_num_threads(),
            "matmul_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", None),
            "model_code": model_code_digest(), "triton": _triton_version(), "inductor": INDUCTOR_SETTINGS,
        }
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
        return self.folder / f"{graph.replace(' ', '-')}-{digest}.pt2"

    def prune(self) -> None:
        """Remove the saved graphs (of any key) unused for `UNUSED_DAYS`; a file that cannot be
        removed stays."""
        cutoff = time.time() - UNUSED_DAYS * 86400
        removed = 0
        for path in self.folder.glob("*.pt2"):
            try:
                status = path.stat()
                if status.st_mtime < cutoff:
                    path.unlink()
                    _names_path(path).unlink(missing_ok=True)
                    removed += status.st_size
            except OSError:
                continue
        if removed:
            log.info("removed saved graphs unused for %d days from %s (%.0f MB)", UNUSED_DAYS, self.folder,
                     removed / 1e6)


class SavedGraph:
    """Calls `module` compiled: per input shape, the graph saved in `store`, or, where none is
    there or it cannot be used, one compiled here (minutes on a fresh GPU) and saved."""

    def __init__(self, name: str, module: nn.Module, store: GraphStore, modules_lock: threading.Lock):
        """name:         the graph in the log and in its file's name (e.g. 'renderer').
        modules_lock: held by every caller of the model's modules in this process while this
                      exports one: export's tracer patches torch.nn.Module's calls process-wide,
                      and a call on another thread meanwhile fails."""
        self._name = name
        self._module = module
        self._store = store
        self._modules_lock = modules_lock
        self._graphs: dict[ShapeKey, _BoundGraph] = {}
        # files found damaged or foreign, as they were then (size, time): warned about once, and
        # tried again once rewritten (a child process compiles and saves the graph anew)
        self._unusable: set[tuple[Path, int, int]] = set()
        self._lock = threading.Lock()  # one load or compile of a shape at a time

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        key = shape_key(inputs[:1])
        graph = self._graphs.get(key)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(key) or self._prepare(inputs)
                self._graphs[key] = graph
        return graph(*inputs)

    def load(self, *inputs: torch.Tensor) -> bool:
        """Load the saved graph for inputs like these, if there is a usable one (seconds; never a
        compile, nor a wait for one under way on another thread); whether the graph for them is
        ready now. A graph is kept by its first input, which for a module decides the others'
        shapes (the renderer's parts: the latent's batch)."""
        if not self._lock.acquire(blocking=False):
            return self.ready(inputs[0])
        key = shape_key(inputs[:1])
        try:
            graph = self._graphs.get(key) or self._load(self._store.path(self._name, inputs[0]))
            if graph is None:
                return False
            self._graphs[key] = graph
        finally:
            self._lock.release()
        return True

    def ready(self, first_input: torch.Tensor) -> bool:
        """Whether the graph for inputs like these is loaded or compiled in this process."""
        return shape_key((first_input,)) in self._graphs

    def _prepare(self, inputs: tuple[torch.Tensor, ...]) -> _BoundGraph:
        path = self._store.path(self._name, inputs[0])
        return self._load(path) or self._compile(path, inputs)

    def _load(self, path: Path) -> _BoundGraph | None:
        """The graph saved at `path`, or None where there is none or (logged) it cannot be used."""
        try:
            status = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        version = (path, status.st_size, status.st_mtime_ns)
        if version in self._unusable:
            return None
        try:
            names = json.loads(_names_path(path).read_text())
            weights = self._weights(names)
            compiled = torch._inductor.CompiledArtifact.load(path=str(path), format="binary")
        except Exception as error:  # a damaged or foreign cache file costs a compile, never the session
            self._unusable.add(version)
            log.warning("the compiled %s in %s cannot be used (%s: %s); compiling it again",
                        self._name, path, type(error).__name__, error)
            return None
        log.info("loaded the compiled %s from %s", self._name, path)
        with contextlib.suppress(OSError):
            os.utime(path)  # in use: not pruned
        return _BoundGraph(compiled, weights)

    def _compile(self, path: Path, inputs: tuple[torch.Tensor, ...]) -> _BoundGraph:
        log.info("compiling the %s for inputs %s", self._name, [tuple(a.shape) for a in inputs])
        with torch.inference_mode(False), torch.no_grad():
            example = tuple(a.clone() for a in inputs)  # export takes no inference-mode tensors
            with self._modules_lock:
                exported = torch.export.export(self._module, example, strict=False)
            unexpected = [spec for spec in exported.graph_signature.input_specs
                          if spec.kind not in (*_WEIGHTS, InputKind.USER_INPUT)]
            if unexpected:
                raise TypeError(f"the {self._name} has inputs that are neither weights nor arguments: {unexpected}")
            names = prune_unread_weights(exported)
            weights = self._weights(names)
            flat = _BoundGraph.arguments(weights, example)
            with torch._inductor.config.patch(INDUCTOR_SETTINGS):
                compiled = torch._inductor.standalone_compile(exported.graph_module, flat,
                                                              dynamic_shapes="from_example_inputs", options={})
        self._save(path, compiled, names)
        return _BoundGraph(compiled, weights)

    def _save(self, path: Path, compiled: torch._inductor.CompiledArtifact, names: list[str | None]) -> None:
        """Keep the graph for the next start; a failed write (a full disk) costs only that."""
        try:
            write_atomically(_names_path(path), json.dumps(names))
            compiled.save(path=str(path), format="binary")  # written whole or not at all
        except (OSError, RuntimeError) as error:
            log.warning("the compiled %s was not saved to %s (%s): the next start compiles it again",
                        self._name, path, error)
            return
        self._store.prune()

    def _weights(self, names: list[str | None]) -> list[torch.Tensor | None]:
        """The module's tensors of `names`, in their order (None for the call's own inputs)."""
        tensors = dict(self._module.named_parameters(remove_duplicate=False))
        tensors.update(self._module.named_buffers(remove_duplicate=False))
        missing = [name for name in names if name is not None and name not in tensors]
        if missing:
            raise KeyError(f"the model has no tensors named {missing[:3]}")
        return [tensors[name] if name is not None else None for name in names]


class _BoundGraph:
    """A compiled graph with the module's weights bound: called with the graph's own inputs only."""

    def __init__(self, compiled: torch._inductor.CompiledArtifact, weights: list[torch.Tensor | None]):
        self._compiled = compiled
        self._weights = weights

    @staticmethod
    def arguments(weights: list[torch.Tensor | None], inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The compiled graph's inputs: the weights, with the call's inputs where they are None."""
        given = iter(inputs)
        return [weight if weight is not None else next(given) for weight in weights]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The module's output: a tensor, or a tuple where the module returns several."""
        outputs = self._compiled(*self.arguments(self._weights, inputs))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def prune_unread_weights(exported: torch.export.ExportedProgram) -> list[str | None]:
    """The names of the weights that the exported graph reads, in the order of its inputs (None for
    the call's own inputs), after removing the inputs of the weights it does not read (in place).
    Export makes every weight of the module an input: a part of the renderer would take all ~800
    of the model's, and a child process that compiles it would need them all in memory."""
    graph = exported.graph_module.graph
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    names = []
    for spec, node in zip(exported.graph_signature.input_specs, placeholders, strict=True):
        if spec.kind in _WEIGHTS and not node.users:
            graph.erase_node(node)
        else:
            names.append(spec.target if spec.kind in _WEIGHTS else None)
    exported.graph_module.recompile()
    return names


def _names_path(path: Path) -> Path:
    return path.with_suffix(".inputs.json")
