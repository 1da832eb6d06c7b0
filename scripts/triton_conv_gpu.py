"""The fused Triton 3x3 convs on a GPU, in one run: parity against the reference, then speed.

    OUT=out/triton-conv python3 scripts/triton_conv_gpu.py [--width 2.0] [--budget-s 450] [--stages ...]
    OUT=out/fp8 python3 scripts/triton_conv_gpu.py --width 2.0 --stages env,fp8 --budget-s 240  # FP8 alone

Stages, in this order; each writes $OUT/<stage>.json when it ends (a stage that fails records its
error there and the others still run; one that would not fit in what is left of --budget-s is
skipped and says so), everything is logged to $OUT/triton_conv_gpu.log:
  env     versions, GPU                                                                 -> env.json
  model   the seeded model (fp16, eager) once in the GPU forms and once in the Triton forms,
          against fp32 reference forms (TF32 off): image and motion-code errors, PSNR; every
          call of the fused conv is recorded (shape, what it fuses, how often per frame)  -> model.json
  convs   per recorded call: its fp16 error against the same sums in fp32, with and without
          fusion (bound: the fused error at most twice the unfused one, max and mean), and
          its time: cuDNN's conv alone, cuDNN's conv + the epilogue compiled by Inductor
          (what runs now), the fused kernel, and the kernel with bias and activation only (the
          cost of the prologue); medians of CUDA-graph replays; per-frame sums; tuned tiles
                                                                                      -> convs.json
  fp8     FP8 operands (liveanim.model.fp8) in the fused convs of the fp16 model: activation
          scales calibrated on 4 frames, errors on 4 others against fp32 reference forms, in the
          kernel and in the reference form, next to the fp16 GPU forms (what runs now); then per
          call of the fused conv (recorded here, the most costly first, while the budget lasts):
          the fp8 kernel's time against the fp16 kernel's and cuDNN's conv + Inductor's epilogue,
          its error against its reference form (same operands: the sums' order only) and against
          fp32, next to the fp16 kernel's; per-frame sums (the fp8 times include two tiny vector
          ops per call: scale / act_scale, act_scale * weight_scale). Needs no other stage
                                                                                      -> fp8.json
  render  `main.py bench`'s measurement (torch+compile+graphs, fp16, accuracy vs fp32) with
          the Triton forms, then with the GPU forms                                   -> render.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from liveanim.engines.torch_engine import backend  # noqa: E402
from liveanim.model import LIAX  # noqa: E402
from liveanim.model import layers  # noqa: E402
from liveanim.model.folding import fold_for_inference  # noqa: E402
from liveanim.model.fp8 import MARGIN, Fp8Conv  # noqa: E402
from liveanim.model.fused_conv import Residual, conv3x3_fused, conv3x3_reference  # noqa: E402
from liveanim.model.layers import REFERENCE_FORMS, KernelForms, set_kernel_forms  # noqa: E402
from fp8_error import Frames, calibrated, errors, run_frames, seeded_model  # noqa: E402

log = logging.getLogger("triton_conv_gpu")
STAGES = ("env", "model", "convs", "fp8", "render")
STAGE_COST_S = {"env": 1, "model": 60, "convs": 90, "fp8": 100, "render": 150}  # estimates, to skip what cannot fit
RENDER_CASE_S = 150  # one compiled engine at full width (a guess: compiling from a cold cache)


@dataclass
class Call:
    """One recorded call of the fused conv: its arguments (the first call of its kind) and count."""

    args: dict[str, Any]
    count: int = 1

    @property
    def name(self) -> str:
        x, weight = self.args["x"], self.args["weight"]
        flags = [k for k in ("scale", "shift", "demod", "residual", "operands") if self.args[k] is not None]
        return f"{x.shape[1]}->{weight.shape[0]} @{x.shape[2]}x{x.shape[3]} [{','.join(flags) or 'bias'}]"


class Recorder:
    """Wraps `layers.conv3x3_fused`: every call runs, the first of each kind is kept, and calls are
    counted while `counting` (a live frame's work: motion encoder and renderer, not the source)."""

    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}
        self.counting = False
        self._inner = layers.conv3x3_fused

    def __call__(self, x, weight, scale=None, shift=None, demod=None, bias=None, activate=True, residual=None,
                 operands=None, impl="triton"):
        args = dict(x=x, weight=weight, scale=scale, shift=shift, demod=demod, bias=bias, activate=activate,
                    residual=residual, operands=operands)
        name = Call(args).name
        if name not in self.calls:
            self.calls[name] = Call({k: _clone(v) for k, v in args.items()}, count=0)
        self.calls[name].count += self.counting
        return self._inner(**args, impl=impl)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone(memory_format=torch.preserve_format)
    if isinstance(value, Residual):
        return Residual(*(_clone(v) for v in value))
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=2.0)
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip stages that would end later than this")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "out/triton-conv"))
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "triton_conv_gpu.log")])
    started = time.perf_counter()
    state: dict[str, Any] = {"width": args.width, "frames": args.frames, "device": "cuda", "out": out}
    for stage in args.stages.split(","):
        left = args.budget_s - (time.perf_counter() - started)
        if left < STAGE_COST_S[stage]:
            result = {"status": "skipped", "reason": f"{left:.0f} s left of the budget, ~{STAGE_COST_S[stage]} s needed"}
        else:
            result = _run_stage(stage, state, deadline=started + args.budget_s)
        (out / f"{stage}.json").write_text(json.dumps(result, indent=2))
        log.info("stage %s: %s (%.0f s since the start)", stage, result.get("status"), time.perf_counter() - started)
    return 0


def _run_stage(stage: str, state: dict[str, Any], deadline: float) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        result = STAGE_FUNCTIONS[stage](state, deadline)
        result = {"status": "ok", **result}
    except Exception as error:  # one stage's failure must not lose the others' results
        log.exception("stage %s failed", stage)
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def stage_env(state: dict[str, Any], deadline: float) -> dict[str, Any]:
    import triton

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU: this script measures the GPU kernels")
    props = torch.cuda.get_device_properties(0)
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "gpu": props.name,
            "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count}


def _exact_fp32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _inputs(device: torch.device) -> dict[str, torch.Tensor]:
    from liveanim.export.graphs import smooth_images

    images = smooth_images(2, seed=1).to(device)
    return {"source": images[:1], "driving": images[1:2]}


def _run_model(model: LIAX, inputs: dict[str, torch.Tensor], dtype: torch.dtype,
               recorder: Recorder | None = None) -> dict[str, torch.Tensor]:
    """One frame as the live loop computes it: source encoded, motion code, latent, image."""
    with torch.inference_mode():
        source = model.encode_source(inputs["source"].to(dtype))
        if recorder is not None:
            recorder.counting = True
        alpha = model.encode_motion(inputs["driving"].to(dtype).contiguous(memory_format=torch.channels_last))
        image = model.render(source, alpha_drive=alpha)
    return {"alpha": alpha.float(), "image": image.float()}


def stage_model(state: dict[str, Any], deadline: float) -> dict[str, Any]:
    device = torch.device(state["device"])
    _exact_fp32()
    base = state["model"] = seeded_model(state["width"], seed=0)
    inputs = _inputs(device)
    reference = copy.deepcopy(base).to(device)
    fold_for_inference(reference, REFERENCE_FORMS)
    truth = _run_model(reference, inputs, torch.float32)
    del reference
    results: dict[str, Any] = {}
    recorder = Recorder()
    state["calls"] = recorder.calls  # kept for the convs stage even if this one fails later
    for name, forms in (("gpu_forms", backend.GPU_FORMS), ("triton_forms", backend.TRITON_FORMS)):
        model = copy.deepcopy(base).to(device=device, dtype=torch.float16)
        fold_for_inference(model, forms, channels_last=True)
        if name == "triton_forms":
            layers.conv3x3_fused = recorder
        try:
            began = time.perf_counter()
            outputs = _run_model(model, inputs, torch.float16, recorder if name == "triton_forms" else None)
            if device.type == "cuda":
                torch.cuda.synchronize()
            results[name] = {"first_frame_s": round(time.perf_counter() - began, 2),
                             **{key: errors(outputs[key], truth[key]) for key in outputs}}
        finally:
            layers.conv3x3_fused = recorder._inner
        log.info("%s: %s", name, results[name])
        del model
    results["calls"] = {name: {"count_per_frame": call.count, "x_stride": list(call.args["x"].stride())}
                        for name, call in recorder.calls.items()}
    gpu, fused = results["gpu_forms"]["image"], results["triton_forms"]["image"]
    results["bound"] = "Triton forms' image error at most 2x the GPU forms' (max and mean), both against fp32"
    results["passed"] = fused["max"] <= 2 * gpu["max"] and fused["mean"] <= 2 * gpu["mean"]
    state["parity_passed"] = results["passed"]
    return results


def _composition(args: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """The fused conv's sums, unfused, in `dtype` (cuDNN's conv, PyTorch's elementwise ops)."""
    return conv3x3_reference(**args, dtype=dtype)


def _compiled_composition() -> Callable[[dict[str, Any]], torch.Tensor]:
    """What runs now for a fused call: cuDNN's fp16 conv with its epilogue compiled by Inductor. One
    graph per layout and set of fused parts: past Dynamo's default limit of 8 the rest would run
    uncompiled (it did in the fp8 stage's first H200 run, which had no limit of its own)."""
    torch._dynamo.config.recompile_limit = 64
    return torch.compile(lambda args: _composition(args, torch.float16), dynamic=True)


def _time_ms(fn: Callable[[], Any]) -> tuple[float, str]:
    """Median ms per call: replays of a CUDA graph (no launch gaps), or CUDA events if capture fails."""
    import triton.testing

    fn()
    fn()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median")), "cudagraph"
    except Exception as error:  # noqa: BLE001 - fall back, and say so in the results
        log.info("CUDA graph timing failed (%s); events instead", error)
        return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")), "events"


def stage_convs(state: dict[str, Any], deadline: float) -> dict[str, Any]:
    calls: dict[str, Call] = state.get("calls") or {}
    if not calls:
        raise RuntimeError("no recorded calls: the model stage did not run the Triton forms")
    _exact_fp32()
    compiled = _compiled_composition()
    rows, totals = {}, {"cudnn_conv_us": 0.0, "cudnn_plus_epilogue_us": 0.0, "fused_us": 0.0}
    for name, call in calls.items():
        if time.perf_counter() > deadline - RENDER_CASE_S:
            rows[name] = {"status": "skipped: out of time"}
            continue
        args = call.args
        with torch.inference_mode():
            truth = _composition({**args, "x": args["x"].float()}, torch.float32)
            unfused = _composition(args, torch.float16)
            fused = conv3x3_fused(**args)
            error_unfused, error_fused = errors(unfused, truth), errors(fused, truth)
            x, weight = args["x"], args["weight"]
            conv_ms, how = _time_ms(lambda: F.conv2d(x, weight, padding=1))
            current_ms, _ = _time_ms(lambda: compiled(args))
            fused_ms, _ = _time_ms(lambda: conv3x3_fused(**args))
            plain_ms, _ = _time_ms(lambda: conv3x3_fused(x, weight, bias=args["bias"]))  # no prologue, no residual
        flops = 2 * x.shape[0] * x.shape[2] * x.shape[3] * weight.shape[0] * weight.shape[1] * 9
        rows[name] = {"count_per_frame": call.count, "error_unfused_fp16": error_unfused, "error_fused_fp16": error_fused,
                      "passed": error_fused["max"] <= 2 * error_unfused["max"] and error_fused["mean"] <= 2 * error_unfused["mean"],
                      "cudnn_conv_us": conv_ms * 1e3, "cudnn_plus_epilogue_us": current_ms * 1e3, "fused_us": fused_ms * 1e3,
                      "fused_plain_us": plain_ms * 1e3, "fused_tflops": flops / fused_ms / 1e9, "cudnn_tflops": flops / conv_ms / 1e9, "timing": how}
        for key in totals:
            totals[key] += rows[name][key] * call.count
        log.info("%s x%d: cuDNN %.1f us, cuDNN+epilogue %.1f us, fused %.1f us; max err %.2e (unfused %.2e)", name,
                 call.count, conv_ms * 1e3, current_ms * 1e3, fused_ms * 1e3, error_fused["max"], error_unfused["max"])
    return {"tuned_configs": _tuned_configs(), "bound": "per call, the fused fp16 error at most 2x the unfused fp16 error (max and mean), both "
                     "against the same sums in fp32 (TF32 off)",
            "passed": all(row.get("passed", True) for row in rows.values()), "per_frame_totals_us": totals,
            "calls": rows}


FP8_FRAMES = (4, 4)  # driving frames to calibrate on and to measure on (each set with a source of its own)
FP8_CALL_S = 20  # one call's errors and times, with the compiles of a new set of fused parts (a guess)


def _frame_errors(model: LIAX, frames: Frames, truth: dict[str, torch.Tensor]) -> dict[str, Any]:
    began = time.perf_counter()
    outputs = run_frames(model, frames.source, frames.driving, torch.float16)
    torch.cuda.synchronize()
    seconds = round(time.perf_counter() - began, 1)
    return {"seconds": seconds, **{key: errors(outputs[key], truth[key]) for key in outputs}}


def _folded(base: LIAX, forms: KernelForms, dtype: torch.dtype, device: torch.device) -> LIAX:
    model = copy.deepcopy(base).to(device=device, dtype=dtype)
    fold_for_inference(model, forms, channels_last=dtype != torch.float32)
    return model


def stage_fp8(state: dict[str, Any], deadline: float) -> dict[str, Any]:
    _exact_fp32()
    device = torch.device(state["device"])
    base = state.get("model") or seeded_model(state["width"], seed=0)
    frames = Frames.seeded(*FP8_FRAMES, seed=1).to(device)
    truth = run_frames(_folded(base, REFERENCE_FORMS, torch.float32, device), frames.source, frames.driving,
                       torch.float32)
    results: dict[str, Any] = {"frames": f"calibrated on 1 source + {FP8_FRAMES[0]} driving, measured on 1 other "
                               f"source + {FP8_FRAMES[1]} other driving (seed 1)", "margin": MARGIN,
                               "against": "fp32 reference forms, TF32 off",
                               "fp16_gpu_forms": _frame_errors(_folded(base, backend.GPU_FORMS, torch.float16, device),
                                                               frames, truth)}
    model = _folded(base, backend.TRITON_FORMS, torch.float16, device)
    results["fused_convs"] = calibrated(model, frames, backend.TRITON_FORMS, torch.float16, MARGIN)
    for name, impl in (("fp8_reference_form", "reference"), ("fp8_kernel", "triton")):
        set_kernel_forms(model, replace(backend.TRITON_FORMS, fused_impl=impl))
        results[name] = _frame_errors(model, frames, truth)
        log.info("%s: %s", name, results[name])
        (state["out"] / "fp8.json").write_text(json.dumps({"status": "partial", **results}, indent=2))
    recorder = Recorder()
    layers.conv3x3_fused = recorder
    try:
        _run_model(model, {"source": frames.source, "driving": frames.driving[:1]}, torch.float16, recorder)
    finally:
        layers.conv3x3_fused = recorder._inner
    results["calls"], results["per_frame_totals_us"] = _fp8_calls(recorder.calls, deadline)
    results["bound"] = ("per call, the fp8 kernel's max error against its reference form (the same e4m3 operands, "
                        "float32 sums) at most 1/4 of the reference form's own max error against fp32")
    results["passed"] = all(row.get("passed", True) for row in results["calls"].values())
    results["tuned_configs"] = _tuned_configs()
    return results


def _flops(args: dict[str, Any]) -> int:
    x, weight = args["x"], args["weight"]
    return 2 * x.shape[0] * x.shape[2] * x.shape[3] * weight.shape[0] * weight.shape[1] * 9


def _fp8_calls(calls: dict[str, Call], deadline: float) -> tuple[dict[str, Any], dict[str, float]]:
    """Per recorded fp8 call (the most costly per frame first): errors and times (see the docstring)."""
    compiled = _compiled_composition()
    rows: dict[str, Any] = {}
    totals = {"cudnn_plus_epilogue_us": 0.0, "fp16_kernel_us": 0.0, "fp8_kernel_us": 0.0}
    for name, call in sorted(calls.items(), key=lambda item: -_flops(item[1].args) * item[1].count):
        if time.perf_counter() > deadline - FP8_CALL_S:
            rows[name] = {"status": "skipped: out of time"}
            continue
        args = call.args
        assert isinstance(args["operands"], Fp8Conv), name
        plain = {**args, "operands": None}
        with torch.inference_mode():
            truth = _composition({**plain, "x": args["x"].float()}, torch.float32)
            reference = _composition({**args, "x": args["x"].float()}, torch.float32)
            fp8, fp16 = conv3x3_fused(**args), conv3x3_fused(**plain)
            fp8_ms, how = _time_ms(lambda: conv3x3_fused(**args))
            fp16_ms, _ = _time_ms(lambda: conv3x3_fused(**plain))
            current_ms, _ = _time_ms(lambda: compiled(plain))
        error_reference, error_kernel = errors(reference, truth), errors(fp8, reference)
        rows[name] = {"count_per_frame": call.count, "act_scale": args["operands"].act_scale,
                      "error_fp8_reference_form": error_reference, "error_fp8_kernel_vs_reference_form": error_kernel,
                      "error_fp8_kernel": errors(fp8, truth), "error_fp16_kernel": errors(fp16, truth),
                      "passed": error_kernel["max"] <= error_reference["max"] / 4,
                      "cudnn_plus_epilogue_us": current_ms * 1e3, "fp16_kernel_us": fp16_ms * 1e3,
                      "fp8_kernel_us": fp8_ms * 1e3, "fp8_tflops": _flops(args) / fp8_ms / 1e9, "timing": how}
        for key in totals:
            totals[key] += rows[name][key] * call.count
        log.info("%s x%d: cuDNN+epilogue %.1f us, fp16 kernel %.1f us, fp8 kernel %.1f us; fp8 max err %.2e "
                 "(vs its reference %.2e)", name, call.count, current_ms * 1e3, fp16_ms * 1e3, fp8_ms * 1e3,
                 rows[name]["error_fp8_kernel"]["max"], error_kernel["max"])
    return rows, totals


def _tuned_configs() -> dict[str, str]:
    """The tiles the autotuner picked, per key (shapes and fused parts)."""
    from liveanim.model import triton_conv

    return {str(key): str(config) for key, config in getattr(triton_conv._conv3x3_kernel, "cache", {}).items()}


def stage_render(state: dict[str, Any], deadline: float) -> dict[str, Any]:
    from liveanim.engines import EngineConfig
    from liveanim.engines.bench import BenchConfig, run_bench

    if not state.get("parity_passed", False):
        raise RuntimeError("the model stage's parity did not pass (or did not run): not timing the render")
    config = EngineConfig(device=state["device"], seeded=True, width=state["width"])
    bench = BenchConfig(engines=("torch+compile+graphs",), precisions=("fp16",), frames=state["frames"], warmup=10,
                        accuracy=True)
    model = state.get("model") or seeded_model(state["width"], seed=0)
    results: dict[str, Any] = {}
    for name, on in (("triton_forms", True), ("gpu_forms", False)):
        if time.perf_counter() > deadline - RENDER_CASE_S:
            results[name] = {"status": "skipped: out of time"}
            continue
        backend.TRITON_CONV = on
        began = time.perf_counter()
        results[name] = run_bench(config, bench, model)
        results[name]["wall_s"] = round(time.perf_counter() - began, 1)
        log.info("%s: %s", name, json.dumps(results[name]["results"])[:600])
        (state["out"] / "render.json").write_text(json.dumps({"status": "partial", **results}, indent=2))
    return results


STAGE_FUNCTIONS: dict[str, Callable[[dict[str, Any], float], dict[str, Any]]] = {
    "env": stage_env, "model": stage_model, "convs": stage_convs, "fp8": stage_fp8, "render": stage_render}

if __name__ == "__main__":
    sys.exit(main())
