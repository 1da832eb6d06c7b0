"""Where the renderer's first compile goes, stage by stage: each part of the decoder exported and
compiled by Inductor as the engine compiles its saved graphs (`standalone_compile` with
`saved_graphs.INDUCTOR_SETTINGS`), each in a process of its own, all at once.

    python3 scripts/renderer_compile_parts.py                       # every stage alone, and the whole
    PARTS="0-3 3-5 5-7" python3 scripts/renderer_compile_parts.py   # other parts ("a-b": stages a..b-1)

A part "a-b" is the engine's `RenderPart` of the decoder's stages a..b-1 (0: 8x8 .. 6: 512x512): from
the latent and the state that stage a takes, with the styles of its own layers; "0-7" is the whole
renderer.
The model is the engine's: full width (WIDTH, 2.0), fp16, the GPU forms, channels-last, folded,
with placeholder weights on the GPU for the part's modules only, as a child of the engine makes it
(placeholder.py; the compiled code does not depend on the values). Each child
reports its export and compile times, the exported graph's size, and the compiled part's time per
call (median of REPEATS calls, synchronized, launches included; the parts one after the other once
every compile has ended).

Environment: OUT (default out/compile-parts), WIDTH, PARTS, REPEATS (50), WORKERS (Inductor's
compile workers per child; default the cores shared out). Writes $OUT/compile_parts.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(os.environ.get("OUT", "out/compile-parts"))
WIDTH = float(os.environ.get("WIDTH", "2.0"))
PARTS = os.environ.get("PARTS", "0-1 1-2 2-3 3-4 4-5 5-6 6-7 0-7").split()
REPEATS = int(os.environ.get("REPEATS", "50"))
DEVICE = os.environ.get("DEVICE", "cuda")  # cpu: a smoke test, in fp32


def parent() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="compile-parts-")
    workers = os.environ.get("WORKERS") or str(max(1, (os.cpu_count() or 1) // len(PARTS)))
    started = time.time()
    children = []
    for part in PARTS:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{cache}/{part}/inductor",
               "TRITON_CACHE_DIR": f"{cache}/{part}/triton", "TORCHINDUCTOR_COMPILE_THREADS": workers,
               "MARKS": cache}
        log = open(OUT / f"part-{part}.log", "w")
        children.append((part, subprocess.Popen([sys.executable, __file__, part], env=env, stdout=subprocess.PIPE,
                                                stderr=log, text=True), log))
    # the compiled parts are timed once every child has compiled, one after the other: the GPU idle but for one
    results = {}
    compiled = set()
    while len(compiled) < len(children):
        time.sleep(0.5)
        compiled = {part for part, process, _ in children
                    if Path(f"{cache}/{part}.compiled").exists() or process.poll() is not None}
    for part, process, log in children:
        Path(f"{cache}/go-{part}").touch()
        out, _ = process.communicate()
        log.close()
        line = out.strip().splitlines()[-1] if out.strip() else "{}"
        results[part] = {"rc": process.returncode, **json.loads(line)}
        print(part, results[part], flush=True)
    import torch
    summary = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "what": "the decoder's parts exported and compiled by Inductor as the engine's saved graphs, one process "
                "per part, all at once (contended); then each compiled part timed alone, one after the other",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "torch": torch.__version__, "width": WIDTH, "cores": os.cpu_count(),
        "compile_workers_per_child": int(workers), "parts": results,
        "wall_s": round(time.time() - started, 1),
    }
    (OUT / "compile_parts.json").write_text(json.dumps(summary, indent=1))


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def child(part: str) -> None:
    import torch

    from liveanim.engines.torch_engine import backend, prefill, saved_graphs
    from liveanim.engines.torch_engine.placeholder import PlaceholderEngine

    first, last = (int(n) for n in part.split("-"))
    device = torch.device(DEVICE)
    precision = "fp16" if DEVICE == "cuda" else "fp32"
    job = prefill.PrefillJob(prefill.RENDER_GRAPH, (1, int(512 * WIDTH)), WIDTH, precision, DEVICE, False,
                             part=(first, last))
    engine = PlaceholderEngine(job)  # the weights that the part reads, and its inputs, as a child makes them
    given = engine.part_inputs
    feats = [feat.contiguous() for feat in given.maps]  # as `SourceMaps` holds them
    inputs = (given.z_target, *given.carry, *feats[first:last])
    timings = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(backend.RenderPart(engine.model, first, last), inputs, strict=False)
        timings["export_s"] = round(time.perf_counter() - t0, 1)
        timings["graph_nodes"] = len(exported.graph_module.graph.nodes)
        tensors = {**dict(exported.named_parameters()), **dict(exported.named_buffers())}
        arguments = iter(inputs)
        flat = [tensors[name] if name is not None else next(arguments)
                for name in saved_graphs.prune_unread_weights(exported)]
        t1 = time.perf_counter()
        with torch._inductor.config.patch(saved_graphs.INDUCTOR_SETTINGS):
            compiled = torch._inductor.standalone_compile(exported.graph_module, flat,
                                                          dynamic_shapes="from_example_inputs", options={})
        compiled(*flat)
        _sync(device)
        timings["compile_s"] = round(time.perf_counter() - t1, 1)
        (Path(os.environ["MARKS"]) / f"{part}.compiled").touch()
        while not (Path(os.environ["MARKS"]) / f"go-{part}").exists():
            time.sleep(0.2)
        times = []
        for _ in range(10 + REPEATS):
            t2 = time.perf_counter()
            compiled(*flat)
            _sync(device)
            times.append((time.perf_counter() - t2) * 1e3)
        timings["call_ms_median"] = round(sorted(times[10:])[REPEATS // 2], 3)
    print(json.dumps(timings), flush=True)


if __name__ == "__main__":
    child(sys.argv[1]) if len(sys.argv) > 1 else parent()
