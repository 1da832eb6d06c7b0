"""The background compiler's child process (engines/torch_engine/prefill.py) with real parts: the
torch engine on the CPU with a tiny model, Inductor's C++ code generation, a real child process that
saves the compiled graph in the engine cache (saved_graphs.py), and fresh caches per test (the child
inherits Inductor's through the environment). Only the motion encoder is compiled: ~35 s on a
2-core machine (the renderer takes minutes).

The engine here runs `tiny_model` (PyTorch's default initialization) while the child builds its
graph from placeholder weights: other values, the same graph.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch._dynamo.utils import counters

from liveanim.contract import FEATURE_NAMES
from liveanim.engines import EngineConfig
from liveanim.engines.loading import load_model
from liveanim.engines.torch_engine import backend, prefill
from liveanim.engines.torch_engine.backend import TorchEngine
from liveanim.engines.torch_engine.compiler import HANDOFF_S, BackgroundCompiler
from liveanim.engines.torch_engine.placeholder import PlaceholderEngine
from liveanim.engines.torch_engine.prefill import PrefillJob
from liveanim.engines.torch_engine.saved_graphs import GRAPHS_DIR
from liveanim.export.verify import TOLERANCES, errors, within

CONFIG = EngineConfig(backend="torch", device="cpu", compile=True, compile_in_background=True, cuda_graphs=False,
                      precision="fp32")
MOTION_JOB = "motion encoder [(1, 3, 512, 512)]"
REPO = Path(__file__).resolve().parents[1]
IN_CHILD = "in a separate process"
TIMEOUT_S = 300.0
# not PyTorch's default ('none'), as export's `exact_fp32` leaves it: the child must compile under it too
MATMUL_PRECISION = "ieee"


@dataclass(frozen=True)
class Start:
    """What one start of the engine did: its log, Inductor's cache counts, the motion codes before
    and after compiling, and the folder that holds its caches (Inductor's and the engine's)."""

    log: list[logging.LogRecord]
    cache_hits: int
    cache_misses: int
    interim: torch.Tensor
    compiled: torch.Tensor
    caches: Path


@pytest.fixture(scope="module", autouse=True)
def matmul_precision() -> Iterator[None]:
    """A process-wide setting in Inductor's cache key off PyTorch's default, for every start here."""
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = MATMUL_PRECISION
    yield
    torch.backends.cuda.matmul.fp32_precision = saved


def use_caches(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor's caches in `folder`, for this process and the children it starts."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(folder / "triton"))
    torch._dynamo.reset()  # nothing compiled earlier in this process is reused from memory
    counters.clear()


def _engine(model: torch.nn.Module, caches: Path) -> TorchEngine:
    return TorchEngine(replace(CONFIG, cache_dir=caches / "engine"), torch.device("cpu"), model=copy.deepcopy(model))


def _start(model: torch.nn.Module, caches: Path, records: list[logging.LogRecord]) -> Start:
    """The live loop's start, at the engine: motion codes from the uncompiled graph at once, then
    from the compiled one once the background compiler is done."""
    engine = _engine(model, caches)
    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1
    try:
        interim = engine.encode_motion({"image": image})["alpha"]
        engine.encode_motion({"image": image})  # the second call of a shape asks for its compiled graph
        assert engine.wait_until_compiled(timeout=TIMEOUT_S)
        assert engine.optimizing().failed == 0
        compiled = engine.encode_motion({"image": image})["alpha"]
    finally:
        engine.close()
    return Start(list(records), counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"],
                 interim, compiled, caches)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def first_start(tiny_model, tmp_path_factory) -> Start:
    """The first start on this machine: fresh caches, no compile times."""
    records, logger = _Records(), logging.getLogger("liveanim.engines.torch_engine")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            caches = tmp_path_factory.mktemp("first-start")
            use_caches(caches, monkeypatch)
            return _start(tiny_model, caches, records.records)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


def _messages(records: list[logging.LogRecord], level: int = logging.INFO) -> list[str]:
    return [record.getMessage() for record in records if record.levelno >= level and record.name.startswith("liveanim")]


def _assert_same_codes(start: Start) -> None:
    error = errors(start.compiled, start.interim, is_code=True)
    assert within(error, TOLERANCES["fp32"], True), error


def test_the_child_compiles_and_this_process_loads_the_saved_graph(first_start, tiny_model):
    seeded = load_model(replace(CONFIG, seeded=True, width=0.125))
    name, weight = next(tiny_model.named_parameters())
    assert not torch.equal(weight, seeded.get_parameter(name)), "the child's weights are others"
    assert any(re.fullmatch(f"compiled {re.escape(MOTION_JOB)} {IN_CHILD} in \\d+ s", message)
               for message in _messages(first_start.log))
    assert (first_start.cache_hits, first_start.cache_misses) == (1, 0), "loaded, not compiled, in this process"
    assert any(message.startswith("loaded the compiled motion encoder from ") for message in _messages(first_start.log))
    assert not [message for message in _messages(first_start.log) if message.startswith("compiling the")]
    assert not _messages(first_start.log, logging.WARNING)
    _assert_same_codes(first_start)


def test_a_failing_child_leaves_the_compile_to_this_process(tiny_model, tmp_path, monkeypatch, caplog):
    """A child that cannot build its graph (here: the engine names it otherwise than the child's copy
    of the code does): one warning with the child's own error, and the graph is compiled here."""
    use_caches(tmp_path, monkeypatch)
    monkeypatch.setattr(backend, "MOTION_GRAPH", "motion encoder of another version")
    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        start = _start(tiny_model, tmp_path, caplog.records)
    warning, = _messages(start.log, logging.WARNING)
    assert warning.startswith(f"compiling motion encoder of another version [(1, 3, 512, 512)] {IN_CHILD} failed")
    assert "exit status 1" in warning
    assert "ValueError: the torch engine compiles no graph 'motion encoder of another version'" in warning
    assert (start.cache_hits, start.cache_misses) == (0, 1), "compiled in this process"
    _assert_same_codes(start)


def test_a_start_with_the_graph_saved_starts_no_child(first_start, tiny_model, tmp_path, monkeypatch, caplog):
    shutil.copytree(first_start.caches, tmp_path, dirs_exist_ok=True)
    use_caches(tmp_path, monkeypatch)
    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        start = _start(tiny_model, tmp_path, caplog.records)
    messages = _messages(start.log)
    assert not [message for message in messages if IN_CHILD in message]
    assert any(re.fullmatch(f"loaded {re.escape(MOTION_JOB)} in [0-9.]+ s", message) for message in messages), \
        "loaded where it was first called: compiled from the first call on"
    assert (start.cache_hits, start.cache_misses) == (1, 0)
    assert not _messages(start.log, logging.WARNING)
    _assert_same_codes(start)


def test_prepare_loads_what_is_saved_and_starts_compiling_the_rest_before_any_frame(first_start, tiny_model, tmp_path,
                                                                                 monkeypatch, caplog):
    """What the window does as it builds the engine: the motion encoder, saved by the first start,
    is loaded, and the renderer's child is started, before any frame is asked for."""
    shutil.copytree(first_start.caches, tmp_path, dirs_exist_ok=True)
    use_caches(tmp_path, monkeypatch)
    engine = _engine(tiny_model, tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
            engine.prepare()
            progress = engine.optimizing()
            assert (progress.finished, progress.graphs) == (1, 2), "the motion encoder loaded, the renderer asked for"
            assert any(re.fullmatch(f"loaded {re.escape(MOTION_JOB)} in [0-9.]+ s", message)
                       for message in _messages(caplog.records))
            pid = _wait_for_child(caplog.records)
            assert _alive(pid)
            assert any(message.startswith("compiling renderer [(1, ") and message.endswith(f"{IN_CHILD} (pid {pid})")
                       for message in _messages(caplog.records))
    finally:
        engine.close()
    assert not _messages(caplog.records, logging.WARNING)


def test_the_renderer_in_parts_is_compiled_by_a_child_per_part_and_renders_as_uncompiled(tiny_model, tmp_path,
                                                                                         monkeypatch, caplog):
    """The renderer compiled in parts (`backend.render_parts`), each by a child process of its own at
    once: the first start's compiled frames must be the uncompiled ones, every part saved, and a
    later start must load every part at its first frame. A start that finds one part missing (a
    first start cut short) compiles that part alone."""
    monkeypatch.setattr(backend, "render_parts", lambda device: ((0, 1), (1, 7)))
    use_caches(tmp_path, monkeypatch)
    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def frames(engine: TorchEngine, count: int) -> list[torch.Tensor]:
        source = engine.encode_source({"image": image})
        inputs = {"z_target": source["z"], **{name: source[name] for name in FEATURE_NAMES}}
        return [engine.render(inputs)["image"] for _ in range(count)]

    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        engine = _engine(tiny_model, tmp_path)
        try:
            interim, _ = frames(engine, 2)  # the second call of a shape asks for its compiled graph
            assert engine.wait_until_compiled(timeout=TIMEOUT_S)
            assert engine.optimizing().failed == 0
            compiled, = frames(engine, 1)
        finally:
            engine.close()
        messages = _messages(caplog.records)
        for stages in ("stage 0", "stages 1-6"):
            assert any(re.fullmatch(f"compiling renderer \\[\\(1, \\d+\\)\\] \\({stages}\\) {IN_CHILD} \\(pid \\d+\\)",
                                    message) for message in messages), stages
        assert any(re.fullmatch(r"compiled renderer \[\(1, \d+\)\] in 2 separate processes in \d+ s",
                                message) for message in messages)
        saved = sorted(path.name.rsplit("-", 1)[0] for path in (tmp_path / "engine" / GRAPHS_DIR).glob("renderer*.pt2"))
        assert saved == ["renderer-stage-0", "renderer-stages-1-6"]
        caplog.clear()
        later = _engine(tiny_model, tmp_path)
        try:
            first_frame, = frames(later, 1)
            assert later.wait_until_compiled(0), "a later start's first frame runs compiled"
        finally:
            later.close()
        loaded = [message for message in _messages(caplog.records)
                  if message.startswith("loaded the compiled renderer")]
        assert len(loaded) == 2, loaded
        assert not _messages(caplog.records, logging.WARNING)
        for path in (tmp_path / "engine" / GRAPHS_DIR).glob("renderer-stage-0-*"):
            path.unlink()
        caplog.clear()
        mended = _engine(tiny_model, tmp_path)
        try:
            frames(mended, 2)
            assert mended.wait_until_compiled(timeout=TIMEOUT_S)
            assert mended.optimizing().failed == 0
            after_mending, = frames(mended, 1)
        finally:
            mended.close()
    children = [message for message in _messages(caplog.records) if message.startswith("compiling renderer")]
    assert len(children) == 1 and "(stage 0)" in children[0], children
    assert not _messages(caplog.records, logging.WARNING)
    for actual in (compiled, first_frame, after_mending):
        error = errors(actual, interim, is_code=False)
        assert within(error, TOLERANCES["fp32"], False), error


def test_parts_compiled_from_placeholder_inputs_take_what_the_live_engine_hands_them(tiny_model, tmp_path,
                                                                                      monkeypatch, caplog):
    """A child compiles its part of the renderer from placeholder weights and inputs made on the meta
    device (placeholder.py), never running the stages before it. The live engine must then load each
    part and render as uncompiled: in the GPU forms, whose uncompiled calls lay maps out otherwise
    than the compiled graphs (on an H200 every part once failed so: its input came in another
    layout). Each part's graph must take only the weights it reads. The children's work, compiled
    here on the CPU, in this process."""
    monkeypatch.setattr(backend, "COMPILED_FORMS", backend.GPU_FORMS)
    monkeypatch.setattr(backend, "TRITON_CONV", False)  # compile_graph sets it from the job
    monkeypatch.setattr(backend, "render_parts", lambda device: ((0, 1), (1, 7)))
    use_caches(tmp_path, monkeypatch)
    config = replace(CONFIG, compile_in_background=False, cache_dir=tmp_path / "engine")
    latent = (1, tiny_model.latent_dim)
    for part in ((1, 7), (0, 1)):
        prefill.compile_graph(PrefillJob(prefill.RENDER_GRAPH, latent, tiny_model.width, "fp32", "cpu", False,
                                         str(tmp_path / "engine"), part=part))
    graphs = tmp_path / "engine" / GRAPHS_DIR
    read = {path.name.rsplit("-", 1)[0]: json.loads(path.read_text()) for path in graphs.glob("renderer-*.inputs.json")}
    modules = {graph: {name.removeprefix("model.dec.").split(".")[0] for name in names if name is not None}
               for graph, names in read.items()}
    assert modules == {"renderer-stage-0": {"bank", "input", "conv1", *_stage_modules("_512")},
                       "renderer-stages-1-6": {"bank", *(module for name in "234567" for module in _stage_modules(name))}}

    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1
    live = TorchEngine(config, torch.device("cpu"), model=copy.deepcopy(tiny_model))
    uncompiled = TorchEngine(replace(config, compile=False), torch.device("cpu"), model=copy.deepcopy(tiny_model))
    images = []
    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        for engine in (live, uncompiled):
            source = engine.encode_source({"image": image})
            images.append(engine.render(source | {"z_target": source["z"]})["image"])
    assert len([message for message in _messages(caplog.records) if message.startswith("loaded the compiled")]) == 2
    assert not any(message.startswith("compiling") for message in _messages(caplog.records))
    error = errors(images[0], images[1], is_code=False)
    assert within(error, TOLERANCES["fp32"], False), error


def _stage_modules(name: str) -> set[str]:
    """The decoder's modules of the stage of checkpoint prefix `name` (decoder.STAGE_NAMES)."""
    return {f"conv{name}_1", f"conv{name}_2", f"conv{name}_2_rgb", f"rgb{name}", f"flow{name}"} | (
        set() if name == "_512" else {f"conv{name}_2_up"})


def test_a_child_holds_only_the_weights_its_graph_reads():
    """At the released model's width a child gives memory to a fraction of the model: the weights
    of its graph, and no more than `weight_bytes` says (what `child_slots` counts per child)."""
    for graph, part, share in ((prefill.MOTION_GRAPH, None, 0.12), (prefill.RENDER_GRAPH, (1, 2), 0.28),
                               (prefill.RENDER_GRAPH, (6, 7), 0.10)):
        shape = (1, 3, 512, 512) if part is None else (1, 1024)
        engine = PlaceholderEngine(PrefillJob(graph, shape, 2.0, "fp32", "cpu", False, None, part=part))
        try:
            tensors = list(itertools.chain(engine.model.parameters(), engine.model.buffers()))
            held = sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)
            whole = sum(t.numel() * t.element_size() for t in tensors)
            module = backend.MotionGraph(engine.model) if part is None else backend.RenderPart(engine.model, *part)
            assert held <= share * whole, (graph, part, held / whole)
            assert backend.weight_bytes(module) <= held < backend.weight_bytes(module) + 1e6, (graph, part)
        finally:
            engine.close()


def test_closing_the_engine_ends_the_child(tiny_model, tmp_path, monkeypatch, caplog):
    use_caches(tmp_path, monkeypatch)
    engine = _engine(tiny_model, tmp_path)
    image = torch.zeros(1, 3, 512, 512)
    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        engine.encode_motion({"image": image})
        engine.encode_motion({"image": image})
        pid = _wait_for_child(caplog.records)
        time.sleep(3.0)  # well into its start
        assert _alive(pid)
        engine.close()
        assert not _alive(pid), "ended with the engine"
        assert not _session_members(pid), "its compile workers too"
        assert engine.wait_until_compiled(timeout=30)
    assert not _messages(caplog.records, logging.WARNING), "an ended child is no failure to warn about"


_PARENT = """
import logging, sys, torch
from liveanim.engines.torch_engine.prefill import ChildCompiler, PrefillJob
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
ChildCompiler().run(PrefillJob("motion encoder", (1, 3, 512, 512), 0.125, "fp32", "cpu", False), "motion encoder")
"""


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads processes from /proc (Linux)")
def test_a_child_ends_soon_after_its_parent_is_killed(tmp_path, monkeypatch):
    """A live process killed hard (SIGKILL, a crash) must not leave minutes of compiling behind."""
    use_caches(tmp_path, monkeypatch)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child = None
        for line in parent.stdout:
            if found := re.search(f"{IN_CHILD} \\(pid (\\d+)\\)", line):
                child = int(found.group(1))
                break
        assert child is not None, "no child process was started"
        time.sleep(2.0)  # into its start: importing torch, building the engine
        assert _running(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 15
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child), "the child went on compiling for nobody"


def test_the_child_s_command_runs_by_hand(tmp_path, monkeypatch):
    """The module's documented command, with no parent pipe on stdin (run by hand, stdin closed):
    it compiles and saves the graph rather than taking the closed stdin for its parent's end."""
    use_caches(tmp_path, monkeypatch)
    job = PrefillJob("motion encoder", (1, 3, 512, 512), 0.125, "fp32", "cpu", False, str(tmp_path / "engine"))
    result = subprocess.run([sys.executable, "-m", "liveanim.engines.torch_engine.prefill", job.to_json()], cwd=REPO,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""
    assert len(list((tmp_path / "engine" / GRAPHS_DIR).glob("motion-encoder-*.pt2"))) == 1


@pytest.mark.parametrize("prepare", [False, True], ids=["as-live-starts", "as-the-window-starts"])
def test_the_start_timeline_script_runs_on_the_cpu(tmp_path, tiny_model, prepare):
    """scripts/start_timeline.py's smoke test (its numbers are for a GPU): a few seconds of frames
    while the child compiles, a report, and no child left when it ends; with a checkpoint's weights.
    As the window starts, the compiles are under way before the stream, which starts a second later."""
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), checkpoint)
    env = {**os.environ, "DEVICE": "cpu", "WEIGHTS": str(checkpoint), "OUT": str(tmp_path),
           "BUDGET_S": "25" if prepare else "12",  # preparing takes seconds of it on this CPU
           "CACHE": str(tmp_path / "cache"), "LIVEANIM_CACHE": str(tmp_path / "weights-cache"),
           "PREPARE": str(int(prepare)), "SETUP_S": "1" if prepare else "0"}
    result = subprocess.run([sys.executable, "scripts/start_timeline.py"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""
    report = json.loads((tmp_path / "start-timeline-prefill-on.json").read_text())
    assert report["prefill_in_child"] and report["device"] == "cpu" and report["frames"] >= 1
    assert (report["weights"], report["width"]) == (str(checkpoint), 0.125)
    assert report["first_frame_s"] > report["stream_start_s"] >= report["time_to_engine_ready_s"] > 0
    assert report["prepared"] == prepare
    started = [re.search(r"^ *([0-9.]+) s .*\(pid (\d+)\)", line) for line in report["engine_log"]]
    children = {int(found.group(2)): float(found.group(1)) for found in started if found}
    assert children and not any(map(_alive, children))
    if prepare:
        assert report["stream_start_s"] >= report["time_to_prepared_s"] + 1.0
        assert min(children.values()) < report["stream_start_s"], "compiling before the stream"
    else:
        assert min(children.values()) >= report["stream_start_s"], "from the stream's second call on"


def _wait_for_child(records: list[logging.LogRecord]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for message in _messages(records):
            if found := re.search(f"{IN_CHILD} \\(pid (\\d+)\\)", message):
                return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError("no child process was started")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _session_members(session: int) -> list[int]:
    """Processes still running (not zombies) in the session the child led."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            members.append(int(stat.parent.name))
    return members


def test_child_slots_follow_the_cores_the_memory_and_the_gpu_memory(monkeypatch):
    """Two cores and 3 GiB of memory per child, and no more children than the GPU's free memory
    holds next to the live process, each with the largest graph's weights: on a small machine the
    graphs are compiled one after the other."""
    gib = 2**30
    monkeypatch.setattr(prefill, "available_memory", lambda: 64 * gib)
    monkeypatch.setattr(prefill.os, "cpu_count", lambda: 2)
    assert prefill.child_slots(torch.device("cpu"), gib) == 1
    monkeypatch.setattr(prefill.os, "cpu_count", lambda: 32)
    assert prefill.child_slots(torch.device("cpu"), gib) == prefill.MAX_CHILDREN == 8
    monkeypatch.setattr(prefill.os, "cpu_count", lambda: 8)
    assert prefill.child_slots(torch.device("cpu"), gib) == 4
    monkeypatch.setattr(prefill, "available_memory", lambda: 7 * gib)
    assert prefill.child_slots(torch.device("cpu"), gib) == 2
    monkeypatch.setattr(prefill, "available_memory", lambda: None)  # not Linux: the cores decide
    assert prefill.child_slots(torch.device("cpu"), gib) == 4
    assert prefill.child_slots(torch.device("cpu"), gib, graphs=2) == 2, "one slot per graph a start compiles"
    # a child with 0.5 GiB of weights needs 2.25 GiB; with the whole released model (2 GiB folded), 3.75 GiB
    for free, weights, slots in ((80 * gib, gib // 2, 4), (9 * gib, gib // 2, 3), (12 * gib, 2 * gib, 2),
                                 (3 * gib, gib // 2, 1)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 96 * gib))
        assert prefill.child_slots(torch.device("cuda"), weights) == slots, (free, weights)


def test_this_machine_s_available_memory_is_read():
    available = prefill.available_memory()
    if Path("/proc/meminfo").exists():
        assert available is not None and 0 < available < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        assert available is None


def test_the_children_of_two_jobs_run_at_once(tmp_path, monkeypatch, caplog):
    """A live start asks for both graphs at once: their children start together, not one after
    the other (here both fail fast: graphs the child does not know)."""
    use_caches(tmp_path, monkeypatch)
    compiler = BackgroundCompiler(torch.device("cpu"), child_slots=2)
    jobs = [PrefillJob(f"graph {index}", (1, 3, 512, 512), 0.125, "fp32", "cpu", False) for index in range(2)]
    try:
        with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
            for job in jobs:
                compiler.submit(job.graph, lambda: None, [(job, lambda: None)])
            assert compiler.wait(timeout=TIMEOUT_S)
    finally:
        compiler.close()
    messages = _messages(caplog.records)
    started = [index for index, message in enumerate(messages) if f"{IN_CHILD} (pid" in message]
    failed = [index for index, message in enumerate(messages) if "failed" in message]
    assert len(started) == len(failed) == 2
    assert max(started) < min(failed), "the second child started before the first one ended"


def test_each_child_s_graph_is_loaded_as_it_ends_while_the_others_still_compile(monkeypatch):
    """A first start's children end one by one (a stage at 512x512 compiles faster than one at 8x8):
    what one saved is loaded then, not once the slowest has ended, and the job runs after every
    load. The children's processes are replaced by calls that end when the test says: the order is
    the behaviour here, and real children would take minutes."""
    release = threading.Event()

    def child_process(self: prefill.ChildCompiler, job: PrefillJob, label: str) -> None:
        if job.graph == "slow":
            assert release.wait(TIMEOUT_S)

    monkeypatch.setattr(prefill.ChildCompiler, "run", child_process)
    events: list[str] = []
    jobs = [PrefillJob(name, (1, 64), 0.125, "fp32", "cpu", False) for name in ("slow", "quick")]
    compiler = BackgroundCompiler(torch.device("cpu"), child_slots=2)
    try:
        compiler.submit("a graph", lambda: events.append("job"),
                        [(job, lambda name=job.graph: events.append(f"loaded {name}")) for job in jobs])
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            time.sleep(0.01)
        assert events == ["loaded quick"], "the quick child's graph is loaded while the slow one compiles"
        release.set()
        assert compiler.wait(timeout=TIMEOUT_S)
    finally:
        release.set()
        compiler.close()
    assert events == ["loaded quick", "loaded slow", "job"]


def test_the_progress_counts_each_part_as_its_child_ends_and_completes_when_the_job_ends(monkeypatch):
    """A first start compiles the renderer in parts, side by side, for most of a minute: the count
    shown ("optimizing for this GPU: 3 of 8") moves as each part's child ends, not once for the
    whole renderer, and says "done" only once the job has prepared the whole graph after the loads.
    The children's processes are replaced by calls that end when the test says."""
    released = {name: threading.Event() for name in ("a", "b", "c", "job")}
    job_started = threading.Event()

    def child_process(self: prefill.ChildCompiler, job: PrefillJob, label: str) -> None:
        assert released[job.graph].wait(TIMEOUT_S)

    def job() -> None:
        job_started.set()
        assert released["job"].wait(TIMEOUT_S)

    def progress_reaches(finished: int) -> tuple[int, int, bool]:
        deadline = time.monotonic() + TIMEOUT_S
        while compiler.progress().finished < finished and time.monotonic() < deadline:
            time.sleep(0.01)
        progress = compiler.progress()
        return progress.finished, progress.graphs, progress.done

    monkeypatch.setattr(prefill.ChildCompiler, "run", child_process)
    parts = [PrefillJob(name, (1, 64), 0.125, "fp32", "cpu", False) for name in ("a", "b", "c")]
    compiler = BackgroundCompiler(torch.device("cpu"), child_slots=3)
    try:
        compiler.submit("renderer", job, [(part, lambda: None) for part in parts])
        assert progress_reaches(0) == (0, 3, False)
        released["b"].set()
        assert progress_reaches(1) == (1, 3, False)
        released["a"].set()
        assert progress_reaches(2) == (2, 3, False)
        released["c"].set()
        assert job_started.wait(TIMEOUT_S)
        assert progress_reaches(2) == (2, 3, False), "every part is loaded, but the job still prepares the graph"
        released["job"].set()
        assert compiler.wait(timeout=TIMEOUT_S)
        assert progress_reaches(3) == (3, 3, True)
    finally:
        for event in released.values():
            event.set()
        compiler.close()


def test_a_child_that_ran_out_of_gpu_memory_is_run_again_alone(monkeypatch, caplog):
    """Children share the GPU's memory, and `child_slots` only estimates what each takes: one that
    ran out of it is run again once the others have ended, and only a child that fails otherwise
    (or again) leaves its graph to this process, whose compile would slow the frames for minutes.
    The children's processes are replaced by calls that fail as the test says."""
    runs: list[str] = []

    def child_process(self: prefill.ChildCompiler, job: PrefillJob, label: str) -> None:
        runs.append(job.graph)
        if job.graph == "broken":
            raise prefill.ChildFailed("it ended with exit status 1; its last output:\nValueError: no such graph")
        if job.graph == "large" and runs.count("large") == 1:
            raise prefill.ChildFailed("it ended with exit status 1; its last output:\ntorch.OutOfMemoryError: CUDA "
                                      "out of memory.", out_of_memory=True)

    monkeypatch.setattr(prefill.ChildCompiler, "run", child_process)
    events: list[str] = []
    jobs = [PrefillJob(name, (1, 64), 0.125, "fp32", "cpu", False) for name in ("large", "broken")]
    compiler = BackgroundCompiler(torch.device("cpu"), child_slots=2)
    try:
        with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
            compiler.submit("a graph", lambda: events.append("job"),
                            [(job, lambda name=job.graph: events.append(f"loaded {name}")) for job in jobs])
            assert compiler.wait(timeout=TIMEOUT_S)
    finally:
        compiler.close()
    assert sorted(runs) == ["broken", "large", "large"] and events == ["loaded large", "job"]
    assert any(message.startswith("compiling a graph again in a separate process, alone: it ran out of GPU memory")
               for message in _messages(caplog.records))
    warnings = _messages(caplog.records, logging.WARNING)
    assert len(warnings) == 1 and "1 of 2 separate processes failed" in warnings[0] and "no such graph" in warnings[0]


def test_a_child_s_output_tells_when_it_ran_out_of_gpu_memory():
    assert prefill.ran_out_of_memory("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert prefill.ran_out_of_memory("RuntimeError: Triton Error [CUDA]: out of memory")
    assert not prefill.ran_out_of_memory("triton.runtime.errors.OutOfResources: out of resource: shared memory")
    assert not prefill.ran_out_of_memory("ValueError: the torch engine compiles no graph 'graph 0'")


def test_a_graph_loads_with_python_s_lock_handed_over_quickly():
    """While a graph loads on the compiler thread, the live loop's thread gets Python's lock back
    within `HANDOFF_S`; the interval is restored afterwards."""
    compiler = BackgroundCompiler(torch.device("cpu"))
    seen: list[float] = []
    before = sys.getswitchinterval()
    try:
        compiler.submit("a graph", lambda: seen.append(sys.getswitchinterval()))
        assert compiler.wait(timeout=30)
    finally:
        compiler.close()
    assert seen == [pytest.approx(HANDOFF_S)] and HANDOFF_S < before
    assert sys.getswitchinterval() == before
