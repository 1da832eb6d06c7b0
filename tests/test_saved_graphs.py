"""Compiled graphs saved in the engine cache and loaded by later engines without tracing
(engines/torch_engine/saved_graphs.py), with real parts: the torch engine on the CPU with a tiny
model and Inductor's C++ code generation. Only the motion encoder is compiled (~30 s each on a
2-core machine); one compile is shared by the tests that only read it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from liveanim.contract import FEATURE_NAMES
from liveanim.engines import EngineConfig, create_engine
from liveanim.engines.torch_engine import backend, prefill, saved_graphs
from liveanim.engines.torch_engine.backend import TorchEngine
from liveanim.engines.torch_engine.saved_graphs import GRAPHS_DIR, UNUSED_DAYS, GraphStore
from liveanim.export.verify import TOLERANCES, errors, within
from liveanim.model.decoder import STAGE_NAMES

CONFIG = EngineConfig(backend="torch", device="cpu", compile=True, cuda_graphs=False, precision="fp32")
IMAGE = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1
TIMEOUT_S = 300.0
REPO = Path(__file__).resolve().parents[1]


def _codes(model: torch.nn.Module, cache: Path, background: bool = False) -> tuple[torch.Tensor, TorchEngine]:
    """The motion codes of IMAGE from a compiled engine over `cache`: compiled at the first call,
    or, with `background`, by the compiler thread while this thread goes on calling the engine."""
    engine = TorchEngine(replace(CONFIG, cache_dir=cache, compile_in_background=background), torch.device("cpu"),
                         model=copy.deepcopy(model))
    try:
        codes = engine.encode_motion({"image": IMAGE})["alpha"]
        if background:
            engine.encode_motion({"image": IMAGE})  # the second call of a shape asks for its compiled graph
            while not engine.wait_until_compiled(timeout=0.05):
                engine.encode_motion({"image": IMAGE})  # the uncompiled graph, while the thread exports
            assert engine.optimizing().failed == 0
            codes = engine.encode_motion({"image": IMAGE})["alpha"]
    finally:
        engine.close()
    return codes, engine


def _age(path: Path, days: float) -> None:
    """Make `path` look last used `days` ago."""
    when = time.time() - days * 86400
    os.utime(path, (when, when))


def _saved_files(cache: Path) -> list[Path]:
    return sorted((cache / GRAPHS_DIR).glob("motion-encoder-*.pt2"))


def _messages(records: list[logging.LogRecord], level: int = logging.INFO) -> list[str]:
    return [record.getMessage() for record in records if record.levelno >= level and record.name.startswith("liveanim")]


def _assert_codes(actual: torch.Tensor, model: torch.nn.Module) -> None:
    error = errors(actual, model.encode_motion(IMAGE), is_code=True)
    assert within(error, TOLERANCES["fp32"], True), error


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory) -> Path:
    """An engine cache holding the compiled motion encoder of the tiny model."""
    cache = tmp_path_factory.mktemp("saved")
    codes, _ = _codes(tiny_model, cache)
    _assert_codes(codes, tiny_model)
    assert len(_saved_files(cache)) == 1
    return cache


def test_a_later_engine_loads_the_saved_graph_without_compiling(saved, tiny_model, tmp_path, caplog):
    shutil.copytree(saved, tmp_path, dirs_exist_ok=True)
    file, = _saved_files(tmp_path)
    _age(file, UNUSED_DAYS + 10)
    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        codes, _ = _codes(tiny_model, tmp_path)
    messages = _messages(caplog.records)
    assert any(message.startswith("loaded the compiled motion encoder from ") for message in messages)
    assert not [message for message in messages if message.startswith("compiling")]
    _assert_codes(codes, tiny_model)
    assert file.stat().st_mtime > time.time() - 3600, "marked as used: not pruned"


@pytest.mark.parametrize("background", [False, True], ids=["at-first-call", "in-background"])
def test_a_damaged_saved_graph_is_compiled_again_and_replaced(saved, tiny_model, tmp_path, caplog, monkeypatch,
                                                              background):
    """A file cut short (a crash while copying a cache, a full disk elsewhere) costs a compile and
    one warning, also in the background (tried at the first call, then compiled in this process)."""
    monkeypatch.setattr(prefill, "IN_CHILD", False)
    shutil.copytree(saved, tmp_path, dirs_exist_ok=True)
    file, = _saved_files(tmp_path)
    whole = file.read_bytes()
    file.write_bytes(whole[: len(whole) // 2])
    stale = file.with_name("renderer-of-another-pytorch.pt2")
    stale.write_bytes(b"unused for long")
    stale.with_suffix(".inputs.json").write_text("[]")
    _age(stale, UNUSED_DAYS + 1)
    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        codes, _ = _codes(tiny_model, tmp_path, background)
    warning, = _messages(caplog.records, logging.WARNING)
    assert warning.startswith(f"the compiled motion encoder in {file} cannot be used (") and \
        warning.endswith("); compiling it again")
    _assert_codes(codes, tiny_model)
    assert file.stat().st_size == len(whole), "saved whole again"
    assert sorted((tmp_path / GRAPHS_DIR).iterdir()) == sorted([file, file.with_suffix(".inputs.json")]), \
        "the graph unused for a month was removed when this one was saved"


def test_a_damaged_saved_graph_rewritten_meanwhile_is_loaded_not_compiled(saved, tiny_model, tmp_path, caplog,
                                                                          monkeypatch):
    """The first call finds the file damaged (one warning); a child process then compiles and saves
    it anew, as on a first start: the compiler thread loads that file instead of compiling again."""
    monkeypatch.setattr(prefill, "IN_CHILD", False)  # the test rewrites the file, as the child would
    shutil.copytree(saved, tmp_path, dirs_exist_ok=True)
    file, = _saved_files(tmp_path)
    whole = file.read_bytes()
    file.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        engine = TorchEngine(replace(CONFIG, cache_dir=tmp_path, compile_in_background=True), torch.device("cpu"),
                             model=copy.deepcopy(tiny_model))
        try:
            engine.encode_motion({"image": IMAGE})  # tries the damaged file, runs uncompiled
            file.write_bytes(whole)
            _age(file, -1)  # rewritten after the failed try
            engine.encode_motion({"image": IMAGE})  # the second call asks for the compiled graph
            assert engine.wait_until_compiled(timeout=TIMEOUT_S) and engine.optimizing().failed == 0
            codes = engine.encode_motion({"image": IMAGE})["alpha"]
        finally:
            engine.close()
    messages = _messages(caplog.records)
    assert len(_messages(caplog.records, logging.WARNING)) == 1
    assert not [message for message in messages if message.startswith("compiling")]
    assert any(message.startswith("loaded the compiled motion encoder from ") for message in messages)
    _assert_codes(codes, tiny_model)


def test_a_cache_that_cannot_be_written_costs_only_the_saving(tiny_model, tmp_path, caplog):
    (tmp_path / GRAPHS_DIR).parent.mkdir(parents=True)
    (tmp_path / GRAPHS_DIR).write_text("a file where the folder of saved graphs belongs")
    with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
        codes, _ = _codes(tiny_model, tmp_path)
    warning, = _messages(caplog.records, logging.WARNING)
    assert warning.startswith("the compiled motion encoder was not saved to ")
    assert warning.endswith("the next start compiles it again")
    _assert_codes(codes, tiny_model)


def test_a_graph_is_exported_while_another_thread_calls_the_engine(tiny_model, tmp_path, monkeypatch):
    """Compiled in this process (no child), while the caller keeps running the uncompiled graph:
    export patches torch.nn.Module's calls process-wide, and a module called meanwhile failed."""
    monkeypatch.setattr(prefill, "IN_CHILD", False)
    calls_before = threading.active_count()
    codes, engine = _codes(tiny_model, tmp_path, background=True)
    _assert_codes(codes, tiny_model)
    assert engine.optimizing().finished == 1 and len(_saved_files(tmp_path)) == 1
    assert threading.active_count() <= calls_before + 1  # the compiler thread, ended with the engine


def test_a_saved_graph_is_named_by_everything_its_code_depends_on(tmp_path, monkeypatch):
    store = GraphStore(tmp_path, "cpu | torch x | fp32 | width 0.125 | forms")
    image = torch.zeros(1, 3, 512, 512)
    name = store.path("motion encoder", image)
    assert name.parent == tmp_path and name.name.startswith("motion-encoder-")
    assert store.path("motion encoder", torch.zeros(1, 3, 512, 512)) == name, "the same for the same inputs"
    others = [
        store.path("renderer", image),
        store.path("motion encoder", torch.zeros(8, 3, 512, 512)),
        store.path("motion encoder", image.half()),
        store.path("motion encoder", image.contiguous(memory_format=torch.channels_last)),
        GraphStore(tmp_path, "cpu | torch x | fp16 | width 0.125 | forms").path("motion encoder", image),
    ]
    monkeypatch.setattr(saved_graphs, "_triton_version", lambda: "another Triton")
    others.append(store.path("motion encoder", image))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    others.append(store.path("motion encoder", image))
    monkeypatch.setattr(saved_graphs, "INDUCTOR_SETTINGS", {"triton.autotune_pointwise": True})
    others.append(store.path("motion encoder", image))
    assert len({name, *others}) == len(others) + 1


_LOADER = "torch._inductor.standalone_compile"
_ENGINE_IN_A_FRESH_PROCESS = f"""
import sys, torch
from liveanim.engines import EngineConfig
from liveanim.engines.torch_engine.backend import TorchEngine
from liveanim.model import LIAX
before = {_LOADER!r} in sys.modules
config = EngineConfig(backend="torch", device="cpu", precision="fp32", compile=True, cuda_graphs=False,
                      cache_dir=sys.argv[1])
TorchEngine(config, torch.device("cpu"), LIAX(0.125)).close()
print(before, {_LOADER!r} in sys.modules)
"""


class _TwoLayers(torch.nn.Module):
    """A probe whose second layer is not called, and has no values (the meta device), as in a child
    process the weights of the graphs it does not compile (placeholder.py)."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4).to_empty(device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(x)


def test_a_graph_takes_only_the_weights_it_reads(tmp_path):
    """A saved graph's inputs are the weights its graph reads: a part of the renderer does not take
    the whole model's, and a child need not give the others memory."""
    module, x = _TwoLayers(), torch.randn(2, 4)
    graph = saved_graphs.SavedGraph("probe", module, GraphStore(tmp_path, "key"), threading.Lock())
    torch.testing.assert_close(graph(x), module.first(x))
    names, = [json.loads(path.read_text()) for path in tmp_path.glob("*.inputs.json")]
    assert names == ["first.weight", "first.bias", None]


def test_an_engine_that_compiles_has_imported_the_loader_before_its_first_frame(tmp_path):
    """Imported at the first load instead, Inductor's loading code held Python's lock for seconds
    while the live loop ran (8 FPS on an H200 machine in those seconds of a first start)."""
    result = subprocess.run([sys.executable, "-c", _ENGINE_IN_A_FRESH_PROCESS, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "True"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled graphs on a GPU need an NVIDIA GPU")
def test_build_engines_saves_the_graphs_that_a_live_start_loads_at_its_first_frame(tmp_path, caplog):
    """README's `build-engines --engine torch --precision fp16`, then an engine made as `live` makes
    it: both graphs loaded where first called, no child, no compile, and the frame matches the
    uncompiled engine's."""
    from liveanim.app.cli import main

    arguments = ["--seeded", "0.125", "--cache-dir", str(tmp_path)]
    assert main(["build-engines", "--engine", "torch", "--precision", "fp16", *arguments]) == 0
    files = sorted((tmp_path / GRAPHS_DIR).glob("*.pt2"))
    in_parts = backend.render_parts(torch.device("cuda")) != backend.WHOLE_RENDERER
    parts = [f"renderer-stage-{stage}" for stage in range(len(STAGE_NAMES))] if in_parts else ["renderer"]
    assert [path.name.rsplit("-", 1)[0] for path in files] == ["motion-encoder", *parts]
    for path in files:  # INDUCTOR_SETTINGS: pointwise kernels made with one block size, not tuned at run time
        code = path.read_bytes()
        assert b"'autotune_pointwise': False" in code and b"'autotune_pointwise': True" not in code
    config = EngineConfig(backend="torch", device="cuda", precision="fp16", seeded=True, width=0.125,
                          cache_dir=tmp_path)
    frames = {}
    for background in (True, False):
        engine = create_engine(replace(config, compile_in_background=background, compile=background))
        try:
            with caplog.at_level(logging.INFO, logger="liveanim.engines.torch_engine"):
                source = engine.encode_source({"image": IMAGE})
                alpha = engine.encode_motion({"image": IMAGE})["alpha"]
                frames[background] = engine.render({"z_target": engine.target_latent(source["z"], alpha),
                                                    **{name: source[name] for name in FEATURE_NAMES}})["image"]
            if background:
                assert engine.optimizing().done
        finally:
            engine.close()
    messages = _messages(caplog.records)
    assert any(message.startswith("loaded motion encoder [(1, 3, 512, 512)] in ") for message in messages)
    assert any(message.startswith("loaded renderer [(1, 64)] in ") for message in messages)
    assert not [message for message in messages if message.startswith("compiling")]
    error = errors(frames[True], frames[False], is_code=False)
    assert within(error, TOLERANCES["fp16"], False), error


def test_loading_never_waits_for_a_compile_under_way_on_another_thread(tmp_path, monkeypatch):
    """The live loop's first call of a shape tries the saved graph; while the compiler thread
    compiles the same graph (minutes), it must get its answer at once and go on uncompiled."""
    compiling, release = threading.Event(), threading.Event()

    def slow_compile(graph, path, inputs):
        compiling.set()
        assert release.wait(TIMEOUT_S)
        return graph._module

    monkeypatch.setattr(saved_graphs.SavedGraph, "_compile", slow_compile)
    graph = saved_graphs.SavedGraph("doubler", torch.nn.Identity(), GraphStore(tmp_path, "key"), threading.Lock())
    x = torch.ones(2)
    worker = threading.Thread(target=graph, args=(x,))
    worker.start()
    try:
        assert compiling.wait(TIMEOUT_S)
        answers: list[bool] = []
        asker = threading.Thread(target=lambda: answers.append(graph.load(x)))
        asker.start()
        asker.join(30.0)  # the compile goes on until the test releases it
        assert answers == [False], "answered while the compile was still under way"
    finally:
        release.set()
        worker.join(TIMEOUT_S)
        asker.join(TIMEOUT_S)
    assert graph.load(x) is True, "ready once the compile is done"
