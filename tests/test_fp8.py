"""FP8 operands for the fused convs (liveanim.model.fp8): scales, calibration and the reference form,
in plain PyTorch on the CPU (the kernel's FP8 mode is tested in tests/test_triton_conv.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from liveanim.model.decoder import FlowResBlock
from liveanim.model.fp8 import E4M3_MAX, MARGIN, Fp8Conv, RoundedOperands, calibrate, conv3x3_fp8_reference, quantize
from liveanim.model.fused_conv import conv3x3_reference
from liveanim.model.layers import REFERENCE_FORMS, ConvLayer, KernelForms, ModulatedConv2d, set_kernel_forms
from liveanim.model.seeded import seed_parameters_

REFERENCE_IMPL = KernelForms(triton_min_side=8, fused_impl="reference")
E4M3_HALF_STEP = 2.0**-4  # relative rounding error bound of a normal e4m3 value (3 mantissa bits)


def _conv_inputs(seed: int = 0, batch: int = 2, c_in: int = 16, c_out: int = 12, side: int = 9):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, side, side, generator=generator)
    weight = torch.randn(c_out, c_in, 3, 3, generator=generator) / math.sqrt(9 * c_in)
    scale = torch.rand(batch, c_in, generator=generator) + 0.5
    shift = torch.randn(batch, c_in, generator=generator)
    return x, weight, scale, shift


def _error_in_scale(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def test_quantize_rounds_to_nearest_and_saturates():
    values = torch.tensor([1000.0, -500.0, 448.0, 1.0625, 1.09375, 0.3, 0.0])
    assert quantize(values).float().tolist() == [448.0, -448.0, 448.0, 1.0, 1.125, 0.3125, 0.0]


def test_weight_scales_are_per_output_channel_and_fill_the_range():
    _, weight, _, _ = _conv_inputs()
    weight[3] *= 1000.0  # one loud output channel must not coarsen the others
    fp8 = Fp8Conv.of(weight, amax=5.0)
    assert fp8.rows.dtype == torch.float8_e4m3fn and fp8.rows.shape == (12, 9 * 16)
    assert torch.equal(fp8.rows.float().abs().amax(dim=1), torch.full((12,), E4M3_MAX))
    dequantized = fp8.weight() * fp8.weight_scale[:, None, None, None]
    bound = E4M3_HALF_STEP * weight.abs() + fp8.weight_scale[:, None, None, None] * 2.0**-9  # subnormals: absolute
    assert torch.all((dequantized - weight).abs() <= bound)
    assert fp8.act_scale == pytest.approx(5.0 * MARGIN / E4M3_MAX)


def test_reference_form_is_the_rounded_operands_summed_in_float32():
    """quantize, dequantize, conv: the reference form's definition, against float64 sums."""
    x, weight, scale, shift = _conv_inputs(seed=1)
    prologue = x * scale[:, :, None, None] + shift[:, :, None, None]
    fp8 = Fp8Conv.of(weight, prologue.abs().max().item())
    factor, offset = fp8.input_factors(scale, shift, x.shape[0])
    inputs = quantize(x * factor[:, :, None, None] + offset[:, :, None, None]).double() * fp8.act_scale
    weights = fp8.weight().double() * fp8.weight_scale.double()[:, None, None, None]
    expected = F.conv2d(inputs, weights, padding=1)
    out = conv3x3_fp8_reference(x, scale, shift, fp8)
    assert out.dtype == torch.float32 and _error_in_scale(out, expected) < 2e-6
    exact = F.conv2d(prologue.double(), weight.double(), padding=1)
    fp16 = conv3x3_reference(x, weight, scale, shift, activate=False, operands=RoundedOperands())
    fp8_error, fp16_error = _error_in_scale(out, exact), _error_in_scale(fp16, exact)
    assert 1e-3 < fp8_error < 0.1 and fp16_error < fp8_error / 8  # e4m3's 3 mantissa bits against fp16's 10


def test_reference_implementation_without_operands_is_the_reference_forms():
    block = seed_parameters_(FlowResBlock(16, 12))
    x, latent = torch.randn(2, 16, 9, 10), torch.randn(2, 12)
    styles = {conv: conv.modulate(latent) for conv in block.modules() if isinstance(conv, ModulatedConv2d)}
    with torch.no_grad():
        expected = block(x, styles)
        set_kernel_forms(block, REFERENCE_IMPL)
        assert _error_in_scale(block(x, styles), expected) < 1e-5


def test_calibration_measures_each_fused_convs_input_and_skips_the_others():
    """A plain ConvLayer's prologue is its input: its activation scale is amax(input) * margin / 448;
    a conv on a map below triton_min_side keeps full-precision operands."""
    fused, small = seed_parameters_(ConvLayer(8, 8, 3)), seed_parameters_(ConvLayer(8, 8, 3))
    model = torch.nn.ModuleDict({"fused": fused, "small": small})
    set_kernel_forms(model, REFERENCE_IMPL)
    frames = [torch.randn(1, 8, 10, 10) * gain for gain in (1.0, 3.0)]
    count = calibrate(model, lambda: [(fused(x), small(x[..., :7, :7])) for x in frames], margin=1.5)
    amax = max(x.abs().max().item() for x in frames)
    assert count == 1 and small.operands is None
    assert fused.operands.act_scale == pytest.approx(amax * 1.5 / E4M3_MAX, rel=1e-6)
    x = frames[0]
    with torch.no_grad():
        expected = fused[1](F.conv2d(x, fused.conv_weight(), padding=1))
        assert 1e-4 < _error_in_scale(fused(x), expected) < 0.1
        set_kernel_forms(model, REFERENCE_FORMS)
        assert torch.equal(fused(x), expected)  # the unfused forms do not round operands


def test_the_error_script_reports_fp8_well_below_fp16(tmp_path):
    """scripts/fp8_error.py (docs/bench/fp8_error_cpu.json) on a tiny model: a report whose FP8 rows
    lose far more than fp16 operands, and whose decoder-only row leaves the motion code untouched."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "fp8.json"
    result = subprocess.run([sys.executable, "scripts/fp8_error.py", "--width", "0.125", "--calibrate", "1",
                             "--evaluate", "1", "--out", str(out)], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["width"] == 0.125 and report["convs_with_fp8_operands"] > 0
    assert report["fp8_operands"]["image"]["psnr_db"] + 10 < report["fp16_operands"]["image"]["psnr_db"]
    assert report["fp8_operands_decoder_only"]["alpha"]["max"] == 0.0
