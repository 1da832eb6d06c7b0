"""The fused Triton 3x3 conv against the reference forms, on this CPU in Triton's interpreter.

The interpreter runs the kernel's own code (tile loop, masks, prologue, epilogue) in numpy, so
these tests check what it computes, not how fast; the GPU's parity and speed are measured by
scripts/triton_conv_gpu.py. Every comparison states its bound: float32 within 2e-5 of the
output's scale (the accumulation order differs from the reference's), float16 within 2 units in
the last place of the output's scale (one rounding at the end, against several in the reference).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: CPU tensors, run in numpy
pytest.importorskip("triton", reason="Triton is not installed (pip install triton; Linux only)")

from liveanim.model import layers  # noqa: E402
from liveanim.model.decoder import FlowResBlock, ResBlock  # noqa: E402
from liveanim.model.fp8 import Fp8Conv, calibrate  # noqa: E402
from liveanim.model.fused_conv import Residual, conv3x3_fused, conv3x3_reference  # noqa: E402
from liveanim.model.layers import (REFERENCE_FORMS, ConvLayer, KernelForms, ModulatedConv2d,  # noqa: E402
                                   set_kernel_forms)
from liveanim.model.seeded import seed_parameters_  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FUSED = KernelForms(triton_min_side=4)
F32_BOUND = 2e-5
F16_ULPS = 2


def _reference(x, weight, scale, shift, demod, bias, residual):  # float64, the composition itself
    x, weight = x.double(), weight.double()
    if scale is not None:
        x = x * scale.double()[:, :, None, None] + (0 if shift is None else shift.double()[:, :, None, None])
    out = F.conv2d(x, weight, padding=1)
    if demod is not None:
        out = out * demod.double()[:, :, None, None]
    out = F.leaky_relu(out + bias.double()[:, None, None], 0.2) * math.sqrt(2.0)
    return out if residual is None else residual._replace(skip=residual.skip.double()).add_to(out)


def _inputs(batch: int, c_in: int, c_out: int, height: int, width: int, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        return (torch.rand(shape, generator=generator) * (high - low) + low).to(dtype)

    x = rand(batch, c_in, height, width).contiguous(memory_format=torch.channels_last)
    weight = rand(c_out, c_in, 3, 3) / math.sqrt(9 * c_in)
    return x, weight, rand(batch, c_in, low=0.5, high=1.5), rand(batch, c_in), rand(batch, c_out, low=0.5, high=1.5), rand(c_out)


def _error_in_scale(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("batch, c_in, c_out, height, width", [
    (1, 8, 8, 8, 8), (2, 24, 20, 9, 11), (1, 40, 3, 5, 17), (1, 64, 48, 12, 7)])
@pytest.mark.parametrize("residual", [None, "gain", "divisor"])
def test_fused_conv_matches_the_composition_in_float32(batch, c_in, c_out, height, width, residual):
    """Odd sizes, channel counts that fill no tile exactly, both residual forms of the decoder."""
    x, weight, scale, shift, demod, bias = _inputs(batch, c_in, c_out, height, width, torch.float32)
    skip = torch.randn(batch, c_out, height, width)
    extra = {None: None, "gain": Residual(skip, torch.randn(1, c_out, 1, 1)),
             "divisor": Residual(skip, divisor=math.sqrt(2.0))}[residual]
    out = conv3x3_fused(x, weight, scale, shift, demod, bias, residual=extra)
    expected = _reference(x, weight, scale, shift, demod, bias, extra)
    assert out.shape == expected.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert _error_in_scale(out, expected) < F32_BOUND


@pytest.mark.parametrize("batch, c_in, c_out, height, width", [(1, 32, 16, 8, 8), (2, 24, 40, 7, 9)])
def test_fused_conv_in_float16_is_within_two_units_in_the_last_place(batch, c_in, c_out, height, width):
    x, weight, scale, _, demod, bias = _inputs(batch, c_in, c_out, height, width, torch.float16, seed=1)
    skip = torch.randn(batch, c_out, height, width).half()
    residual = Residual(skip, torch.randn(1, c_out, 1, 1).half())
    out = conv3x3_fused(x, weight, scale, None, demod, bias, residual=residual)
    expected = _reference(x, weight, scale, None, demod, bias, residual)
    assert out.dtype == torch.float16
    assert _error_in_scale(out, expected) < F16_ULPS * 2.0**-10


def test_without_modulation_the_input_is_read_as_it_is():
    """A plain ConvLayer's form: no scale, no demodulation, the weight in the reference layout."""
    x, weight, *_, bias = _inputs(1, 16, 16, 6, 6, torch.float32, seed=2)
    out = conv3x3_fused(x.contiguous(), weight, bias=bias)
    assert _error_in_scale(out, _reference(x, weight, None, None, None, bias, None)) < F32_BOUND


def _on_the_e4m3_grid(batch: int, c_in: int, height: int, width: int, dtype: torch.dtype, seed: int):
    """x, scale, shift whose prologue output x * scale + shift is a multiple of 1/8 in [-1.75, 1.75]:
    e4m3 values, so the kernel's conversion to e4m3 is exact. Triton's interpreter (3.9) truncates
    that conversion (and drops the carry of its rounding); the GPU rounds to nearest, which the GPU
    script's fp8 stage checks on the model's own calls."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (batch, c_in, height, width), generator=generator).to(dtype) / 4
    scale = 2.0 ** torch.randint(-1, 2, (batch, c_in), generator=generator).to(dtype)
    shift = torch.randint(-6, 7, (batch, c_in), generator=generator).to(dtype) / 8
    return x.contiguous(memory_format=torch.channels_last), scale, shift


@pytest.mark.parametrize("batch, c_in, c_out, height, width, dtype", [
    (1, 8, 8, 8, 8, torch.float32), (2, 24, 20, 9, 11, torch.float32), (1, 40, 3, 5, 17, torch.float16)])
@pytest.mark.parametrize("parts", ["scale", "shift,residual", "bias"])
def test_fp8_kernel_matches_its_reference_form(batch, c_in, c_out, height, width, dtype, parts):
    """The same e4m3 operands (act_scale 1: amax 224 with the margin of 2) in the kernel and in the
    reference form: only the order of the float32 sums differs. 'bias' is a plain ConvLayer's form,
    with no style: the kernel's prologue then only divides by act_scale."""
    x, scale, shift = _on_the_e4m3_grid(batch, c_in, height, width, dtype, seed=3)
    _, weight, _, _, demod, bias = _inputs(batch, c_in, c_out, height, width, dtype, seed=4)
    fp8 = Fp8Conv.of(weight, amax=224.0)
    assert fp8.act_scale == 1.0
    residual = Residual(torch.randn(batch, c_out, height, width).to(dtype), divisor=math.sqrt(2.0))
    args = dict(x=x, weight=weight, scale=None if parts == "bias" else scale, shift=shift if "shift" in parts else None,
                demod=None if parts == "bias" else demod, bias=bias,
                residual=residual if "residual" in parts else None, operands=fp8)
    out, expected = conv3x3_fused(**args), conv3x3_reference(**args, dtype=torch.float64)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert _error_in_scale(out, expected.double()) < (F32_BOUND if dtype == torch.float32 else F16_ULPS * 2.0**-10)


def _pair(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(reference, fused) copies of one seeded module."""
    seed_parameters_(module)
    fused = copy.deepcopy(module)
    set_kernel_forms(module, REFERENCE_FORMS)
    set_kernel_forms(fused, FUSED)
    return module, fused


def _styles(block: torch.nn.Module, latent: torch.Tensor):
    return {conv: conv.modulate(latent) for conv in block.modules() if isinstance(conv, ModulatedConv2d)}


@pytest.mark.parametrize("channels_last", [False, True])
def test_flow_res_block_fused_with_its_group_norm_and_gamma(channels_last):
    """The decoder's flow block: the GroupNorm goes into the second conv's prologue, gamma and
    the skip into its epilogue."""
    reference, fused = _pair(FlowResBlock(16, 12))
    x = torch.randn(2, 16, 9, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    latent = torch.randn(2, 12)
    with torch.no_grad():
        expected, out = reference(x, _styles(reference, latent)), fused(x, _styles(fused, latent))
    assert _error_in_scale(out, expected.double()) < 1e-4


def test_res_block_and_conv_layer_fused():
    """The decoder's feature-refinement block: bias, activation and (sum)/sqrt(2) in the epilogue."""
    reference, fused = _pair(ResBlock(24))
    x = torch.randn(1, 24, 8, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, out = reference(x), fused(x)
    assert _error_in_scale(out, expected.double()) < 1e-4


def test_maps_below_the_minimum_side_and_other_convs_keep_their_forms():
    """Only size-preserving 3x3 convs on maps from `triton_min_side` up are fused: a smaller map,
    a 1x1 conv and a strided conv give the reference's bits."""
    forms = KernelForms(triton_min_side=16)
    for layer, x in ((ConvLayer(8, 8, 3), torch.randn(1, 8, 15, 15)), (ConvLayer(8, 4, 1), torch.randn(1, 8, 16, 16)),
                     (ConvLayer(8, 8, 3, downsample=True), torch.randn(1, 8, 16, 16))):
        seed_parameters_(layer)
        expected = layer(x)
        set_kernel_forms(layer, forms)
        assert torch.equal(layer(x), expected)


def test_the_operator_traces_whole_into_a_compiled_graph():
    """torch.compile keeps the operator as one node (its shape from the fake form); run through
    the eager backend here, the GPU compiles it with Inductor."""
    reference, fused = _pair(ResBlock(8))
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert _error_in_scale(compiled(x), reference(x).double()) < 1e-4


def _gpu_script(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("triton_conv_gpu", REPO / "scripts" / "triton_conv_gpu.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_script_reference_is_what_the_kernel_computes(monkeypatch):
    """The GPU script records the model's fused calls and checks each against its own unfused
    composition of the same sums: that composition must be the kernel's definition."""
    script = _gpu_script(monkeypatch)
    recorder = script.Recorder()
    monkeypatch.setattr(layers, "conv3x3_fused", recorder)
    _, fused = _pair(FlowResBlock(16, 12))
    x = torch.randn(1, 16, 7, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fused(x, _styles(fused, torch.randn(1, 12)))  # the source's pass: kept, not counted
        recorder.counting = True
        fused(x, _styles(fused, torch.randn(1, 12)))
    assert sorted(call.count for call in recorder.calls.values()) == [1, 1]
    assert any("shift" in name and "residual" in name for name in recorder.calls)
    for call in recorder.calls.values():
        expected = script._composition(call.args, torch.float64)
        assert _error_in_scale(conv3x3_fused(**call.args), expected) < F32_BOUND


def test_gpu_script_fp8_calls_are_checked_and_timed(monkeypatch):
    """The fp8 stage's per-call part on a calibrated block's recorded calls, with the GPU's timer and
    compiler left out (each timed function runs once, as 1 ms): every row and total is filled in."""
    script = _gpu_script(monkeypatch)
    monkeypatch.setattr(script, "_time_ms", lambda fn: (fn(), (1.0, "test"))[1])
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    _, fused = _pair(FlowResBlock(16, 12))
    x = torch.randn(1, 16, 7, 9).contiguous(memory_format=torch.channels_last)
    styles = _styles(fused, torch.randn(1, 12))
    set_kernel_forms(fused, replace(FUSED, fused_impl="reference"))
    assert calibrate(fused, lambda: fused(x, styles)) == 2
    set_kernel_forms(fused, FUSED)
    recorder = script.Recorder()
    monkeypatch.setattr(layers, "conv3x3_fused", recorder)
    recorder.counting = True
    with torch.no_grad():
        fused(x, styles)
    rows, totals = script._fp8_calls(recorder.calls, deadline=time.perf_counter() + 60)
    assert len(rows) == 2 and all("operands" in name for name in rows)
    assert totals == {"cudnn_plus_epilogue_us": 2000.0, "fp16_kernel_us": 2000.0, "fp8_kernel_us": 2000.0}
    for row in rows.values():
        assert 0 < row["error_fp8_reference_form"]["max"]
        assert row["error_fp16_kernel"]["max"] < row["error_fp8_kernel"]["max"]


def test_gpu_script_records_each_stage_even_when_it_cannot_run(tmp_path):
    """A stage that fails writes its error, one that cannot fit in the budget says so, and the
    script still ends normally: partial results of a GPU run survive."""
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "triton_conv_gpu.py"), "--stages", "convs,render",
                          "--budget-s", "120"], env={**os.environ, "OUT": str(tmp_path)}, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    convs, render = (json.loads((tmp_path / f"{stage}.json").read_text()) for stage in ("convs", "render"))
    assert convs["status"] == "failed" and "no recorded calls" in convs["error"]
    assert render["status"] == "skipped" and "left of the budget" in render["reason"]
    assert (tmp_path / "triton_conv_gpu.log").read_text()


# Compiles the kernel for Hopper (sm_90) as Triton would on an H100/H200, with the alignment the
# launcher finds on channels-last maps; prints the shared memory it takes. Runs without a GPU.
_COMPILE_FOR_SM90 = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from liveanim.model import triton_conv

fp8 = sys.argv[1] == "fp8"
kernel = triton_conv._conv3x3_kernel.fn
names = [p.name for p in kernel.params]
flags = dict(HAS_SCALE=True, HAS_SHIFT=True, HAS_DEMOD=True, HAS_BIAS=True, ACTIVATE=True, HAS_ALPHA=True,
             HAS_RESIDUAL=True, IEEE=False, SLOPE=0.2, GAIN=2**0.5, FP8=fp8, FP8_MAX=448.0, BLOCK_M=128, BLOCK_N=128,
             BLOCK_K=64, sxc=1, src=1)
signature = {name: "*fp16" if name.endswith("_ptr") else "fp32" if name == "beta" else "i32" for name in names}
if fp8:  # e4m3 weight rows, float32 prologue vectors and output factors
    signature.update(w_ptr="*fp8e4nv", scale_ptr="*fp32", shift_ptr="*fp32", factor_ptr="*fp32")
signature.update({name: "constexpr" for name in flags})
aligned = [name for name in names if name.endswith("_ptr") or name in ("W", "HW", "C_IN", "C_OUT", "sxb", "sxh", "sxw")]
source = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in flags.items()},
                   attrs={(names.index(name),): [["tt.divisibility", 16]] for name in aligned})
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 64), options={"num_warps": 8, "num_stages": 3})
ptx = compiled.asm["ptx"]
print(compiled.metadata.shared, "wgmma" in ptx, "e4m3.e4m3" in ptx)
"""


@pytest.mark.parametrize("operands", ["fp16", "fp8"])
def test_the_kernel_compiles_for_hopper_without_a_gpu(operands):
    """What the interpreter accepts, the GPU compiler may not: the fully fused variant must build
    for sm_90 with tensor-core instructions (wgmma) here, before a GPU run is spent on it; in FP8
    mode with e4m3 x e4m3 products."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90, operands], env=env, capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    shared, wgmma, e4m3 = run.stdout.split()
    assert wgmma == "True" and int(shared) > 0 and e4m3 == str(operands == "fp8")


def test_the_engine_switch_picks_the_triton_forms_only_in_half_precision(monkeypatch):
    """Off by default (until the GPU numbers say so); switched on, fp16 and bf16 graphs get the
    fused convs, fp32 keeps cuDNN's."""
    from liveanim.engines.torch_engine import backend

    assert backend.gpu_forms(torch.float16) == backend.GPU_FORMS
    monkeypatch.setattr(backend, "TRITON_CONV", True)
    assert backend.gpu_forms(torch.float16).triton_min_side == backend.gpu_forms(torch.bfloat16).triton_min_side == 64
    assert backend.gpu_forms(torch.float32) == backend.GPU_FORMS
