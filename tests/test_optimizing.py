"""Progress while the engine optimizes for this GPU in the background: the graphs the compiler
prepares, counted, the time left from the last start's measurements, as session events."""

from __future__ import annotations

import json
import threading
import time

import cv2
import pytest
import torch
from skimage import data

from liveanim.engines import EngineConfig, create_engine
from liveanim.engines.base import OptimizingProgress
from liveanim.engines.torch_engine.compile_times import COMPILE_TIMES_FILE, CompileTimes, compile_key
from liveanim.engines.torch_engine import prefill
from liveanim.engines.torch_engine.compiler import BackgroundCompiler
from liveanim.engines.torch_engine.prefill import PrefillJob
from liveanim.engines.torch_engine.saved_graphs import SavedGraph
from liveanim.model.layers import REFERENCE_FORMS
from liveanim.pipeline.animator import Animator
from liveanim.pipeline.events import Optimized, Optimizing, OptimizingReports
from liveanim.pipeline.live import LiveConfig, LiveSession
from liveanim.pipeline.sources import ImageFolderSource

TIMEOUT_S = 60.0
KEY = compile_key(torch.device("cpu"), "fp32", 0.125, REFERENCE_FORMS)


class HeldJobs:
    """Jobs for a real BackgroundCompiler that run until the test lets each one finish."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self._release = threading.Semaphore(0)

    def job(self) -> None:
        self.started.release()
        assert self._release.acquire(timeout=TIMEOUT_S)

    def finish_one(self) -> None:
        self._release.release()

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=TIMEOUT_S)


def _report(compiler: BackgroundCompiler, reports: OptimizingReports) -> str | None:
    """What a session would emit for the compiler's progress now (None: nothing new)."""
    event = reports.update(compiler.progress())
    return event.message if event is not None else None


def test_the_first_time_counts_graphs_and_keeps_their_times_for_the_next(tmp_path):
    times = CompileTimes(tmp_path, KEY)
    compiler, held, reports = BackgroundCompiler(torch.device("cpu"), times), HeldJobs(), OptimizingReports()
    assert _report(compiler, reports) is None, "nothing asked: nothing said"
    compiler.submit("renderer [(1, 64)]", held.job)
    compiler.submit("motion encoder [(1, 3, 512, 512)]", held.job)
    held.wait_started()
    assert _report(compiler, reports) == "optimizing for this GPU: 1 of 2, first time on this GPU: a few minutes"
    assert _report(compiler, reports) is None, "said once, not on every frame"
    held.finish_one()
    held.wait_started()
    assert _report(compiler, reports) == "optimizing for this GPU: 2 of 2, first time on this GPU: a few minutes"
    held.finish_one()
    assert compiler.wait(timeout=TIMEOUT_S)
    assert _report(compiler, reports) == "optimized for this GPU: full speed from now on"
    assert _report(compiler, reports) is None
    compiler.close()
    kept = json.loads((tmp_path / COMPILE_TIMES_FILE).read_text())
    assert set(kept[KEY]) == {"renderer [(1, 64)]", "motion encoder [(1, 3, 512, 512)]"}
    assert CompileTimes(tmp_path, KEY).last == kept[KEY]


def test_the_next_start_counts_down_from_the_last_times(tmp_path):
    """Each job is expected to end as long after it was asked for as the last time: the jobs were
    asked for together, so the time left is the later end (30 s), not the sum of the times."""
    CompileTimes(tmp_path, "another GPU").record("renderer [(1, 64)]", 5.0)
    last = CompileTimes(tmp_path, KEY)
    last.record("renderer [(1, 64)]", 30.0)
    last.record("motion encoder [(1, 3, 512, 512)]", 9.0)
    compiler = BackgroundCompiler(torch.device("cpu"), CompileTimes(tmp_path, KEY))
    held, reports = HeldJobs(), OptimizingReports()
    compiler.submit("renderer [(1, 64)]", held.job)
    compiler.submit("motion encoder [(1, 3, 512, 512)]", held.job)
    held.wait_started()
    assert _report(compiler, reports) == "optimizing for this GPU: 1 of 2, about 30 s left"
    held.finish_one()
    held.wait_started()
    assert _report(compiler, reports) == "optimizing for this GPU: 2 of 2, a few seconds left"
    compiler.submit("renderer [(8, 64)]", held.job)  # a shape never compiled here: no estimate
    assert _report(compiler, reports) == "optimizing for this GPU: 2 of 3"
    held.finish_one()
    held.finish_one()
    assert compiler.wait(timeout=TIMEOUT_S)
    compiler.close()
    assert CompileTimes(tmp_path, "another GPU").last == {"renderer [(1, 64)]": 5.0}, "each key its own times"


def test_the_time_kept_runs_from_the_ask_to_the_end_children_included(tmp_path, monkeypatch):
    """A first start's renderer is mostly its children's compiles (about 40 s on an H200) and a few
    seconds of loads in this process: a later start that compiles it again counts down from the
    whole. A start that only loads the saved graph keeps no time: a load says nothing about a
    compile. The child's process is replaced by a call that takes 0.5 s."""
    monkeypatch.setattr(prefill.ChildCompiler, "run", lambda self, job, label: time.sleep(0.5))
    label = "renderer [(1, 64)]"
    compiler = BackgroundCompiler(torch.device("cpu"), CompileTimes(tmp_path, KEY))
    try:
        compiler.submit(label, lambda: None, [(PrefillJob("renderer", (1, 64), 0.125, "fp32", "cpu", False),
                                               lambda: None)])
        assert compiler.wait(timeout=TIMEOUT_S)
        assert compiler.run_here(label, lambda: "the saved graph") == "the saved graph"
    finally:
        compiler.close()
    kept = CompileTimes(tmp_path, KEY).last
    assert list(kept) == [label] and kept[label] >= 0.5


def test_a_failed_compile_is_counted_and_said_at_the_end(tmp_path):
    def broken() -> None:
        raise RuntimeError("the compiler crashed")

    compiler, reports = BackgroundCompiler(torch.device("cpu"), CompileTimes(tmp_path, KEY)), OptimizingReports()
    held = HeldJobs()
    compiler.submit("renderer [(1, 64)]", held.job)
    compiler.submit("motion encoder [(1, 3, 512, 512)]", broken)
    held.wait_started()
    assert _report(compiler, reports).startswith("optimizing for this GPU: 1 of 2")
    held.finish_one()
    assert compiler.wait(timeout=TIMEOUT_S)
    assert _report(compiler, reports) == ("optimizing for this GPU ended, but 1 graph(s) could not be compiled "
                                          "and run more slowly (the log says why)")
    compiler.close()
    assert list(CompileTimes(tmp_path, KEY).last) == ["renderer [(1, 64)]"], "no time kept for a failure"


@pytest.mark.parametrize("seconds, words", [(3.0, "a few seconds"), (41.0, "about 45 s"), (89.0, "about 90 s"),
                                            (250.0, "about 4 min")])
def test_time_left_is_said_in_steps_a_person_reads(seconds, words):
    assert Optimizing(2, 3, seconds, False).message == f"optimizing for this GPU: 2 of 3, {words} left"


def test_unreadable_or_unwritable_times_only_cost_the_estimate(tmp_path):
    (tmp_path / COMPILE_TIMES_FILE).parent.mkdir(parents=True)
    (tmp_path / COMPILE_TIMES_FILE).write_text("{not json")
    times = CompileTimes(tmp_path, KEY)
    assert times.last == {}
    times.record("renderer [(1, 64)]", 12.0)
    assert CompileTimes(tmp_path, KEY).last == {"renderer [(1, 64)]": 12.0}
    blocked = CompileTimes(tmp_path / "a file", KEY)
    (tmp_path / "a file").write_text("")
    blocked.record("renderer [(1, 64)]", 12.0)  # cannot make its folder: logged, no error


def test_reports_say_nothing_for_an_engine_without_background_work():
    reports = OptimizingReports()
    assert reports.update(None) is None
    assert reports.update(OptimizingProgress(finished=2, graphs=2)) is None


def test_a_live_session_reports_the_engine_optimizing_then_done(tmp_path, monkeypatch):
    """The live loop over the torch engine compiling in the background (its real compiler thread
    and job queue). The graph run as it is stands in for each compiled one, held until the test lets
    its preparation finish: the real compile of even the tiny model takes minutes on this CPU (so no
    child process compiles first either: tests/test_prefill.py and test_saved_graphs.py have those)."""
    held = HeldJobs()
    monkeypatch.setattr(prefill, "IN_CHILD", False)

    def held_prepare(graph: SavedGraph, inputs):
        assert threading.current_thread().name == "engine-compiler"
        held.job()
        return graph._module

    monkeypatch.setattr(SavedGraph, "_prepare", held_prepare)
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    config = EngineConfig(backend="torch", device="cpu", seeded=True, width=0.125, compile=True,
                          compile_in_background=True, cache_dir=tmp_path / "cache")
    engine = create_engine(config)
    events: list[Optimizing | Optimized] = []
    session = LiveSession(LiveConfig(track=False), Animator(engine), ImageFolderSource(frames, loop=True),
                          on_event=lambda event: events.append(event) if isinstance(event, (Optimizing, Optimized))
                          else None)
    session.start()
    try:
        for graph in (1, 2):
            held.wait_started()
            _wait_for(lambda: any(isinstance(event, Optimizing) and event.graph == graph for event in events))
            held.finish_one()
        _wait_for(lambda: any(isinstance(event, Optimized) for event in events))
    finally:
        session.stop()
        engine.close()
    first_time = ", first time on this GPU: a few minutes"
    assert [event.message for event in events] == [f"optimizing for this GPU: 1 of 2{first_time}",
                                                   f"optimizing for this GPU: 2 of 2{first_time}",
                                                   "optimized for this GPU: full speed from now on"]
    kept = json.loads((tmp_path / "cache" / COMPILE_TIMES_FILE).read_text())
    (key, jobs), = kept.items()
    assert key.startswith("cpu | torch ") and "| fp32 | width 0.125 |" in key
    assert set(jobs) == {"motion encoder [(1, 3, 512, 512)]", "renderer [(1, 64)]"}


def _wait_for(condition, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.05)
