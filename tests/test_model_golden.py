"""Our LIA-X against the reference implementation's float64 outputs (../shared/golden)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from liveanim.model import LIAX
from tests.conftest import GOLDEN_DIR, assert_image_close, golden_recipe, to_model_input

CODE_TOL = 1e-4


@pytest.fixture(scope="module")
def source_state(golden_model, golden):
    with torch.inference_mode():
        return golden_model.encode_source(to_model_input(golden["source"]))


@pytest.fixture(scope="module")
def alpha_drive(golden_model, golden):
    with torch.inference_mode():
        return golden_model.encode_motion(to_model_input(golden["driving"]))


def test_motion_codes_and_latent_match_reference(source_state, alpha_drive, golden):
    for actual, key in [(alpha_drive, "alpha_drive"), (source_state.z, "z_source"),
                        (source_state.alpha, "alpha_source")]:
        err = (actual - torch.from_numpy(golden[key])).abs().max().item()
        assert err <= CODE_TOL, f"{key}: max abs error {err:.2e}"


def test_feature_maps_coarsest_first(source_state, golden):
    sizes = [f.shape[-1] for f in source_state.feats]
    assert sizes == [8, 16, 32, 64, 128, 256, 512]
    means = np.array([f.mean().item() for f in source_state.feats])
    stds = np.array([f.std().item() for f in source_state.feats])
    np.testing.assert_allclose(means, golden["feat_mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stds, golden["feat_std"], rtol=1e-3)


def test_reconstruction(golden_model, source_state, golden):
    with torch.inference_mode():
        assert_image_close(golden_model.render(source_state), golden["recon"])


def test_edit(golden_model, source_state, golden, golden_edit):
    with torch.inference_mode():
        assert_image_close(golden_model.render(source_state, edit=golden_edit), golden["edit"])


def test_animation_relative_to_first_frame(golden_model, source_state, alpha_drive, golden, golden_edit):
    with torch.inference_mode():
        out = golden_model.render(source_state, alpha_drive=alpha_drive, alpha_start=alpha_drive[:1],
                                  edit=golden_edit)
    assert_image_close(out, golden["anim"])
    # the driving motion itself must reach the image: frames differ by far more than the tolerance
    assert (out[1] - out[0]).abs().mean() > 1e-2


def test_dictionary_basis_cached_and_refreshed(golden_model):
    q = golden_model.directions()
    assert q is golden_model.directions(), "Q must be computed once, not per call"
    eye = q.t() @ q
    assert torch.allclose(eye, torch.eye(40), atol=1e-5)
    model = LIAX(0.125)
    before = model.directions().clone()
    with torch.no_grad():
        # a sign flip would leave Q unchanged (Householder QR flips R instead): use new values
        model.dec.direction.weight.copy_(torch.randn_like(model.dec.direction.weight))
    assert not torch.allclose(model.directions(), before), "Q must follow the weights"


def test_released_layout_loads_strictly_on_meta():
    """The full 0.91 B model has exactly the checkpoint's names and shapes (no 3.6 GB allocated)."""
    recipe = golden_recipe()
    layout = {name: shape for name, shape, _ in recipe.read_layout(str(GOLDEN_DIR / "layout_scale2.tsv"))}
    assert LIAX.expected_layout(2.0, 40) == layout
    with torch.device("meta"):
        model = LIAX(2.0)
        state = {name: torch.empty(shape) for name, shape in layout.items()}
    model.load_state_dict(state, strict=True, assign=True)
    params = sum(p.numel() for p in model.parameters())
    assert params == 910_571_751  # the golden README's count; buffers (blur kernels) excluded


def test_golden_layout_matches():
    recipe = golden_recipe()
    layout = {name: shape for name, shape, _ in recipe.read_layout(str(GOLDEN_DIR / "layout_w0.5.tsv"))}
    assert LIAX.expected_layout(0.5, 40) == layout


@pytest.mark.parametrize("width", [0.125, 0.25])
def test_narrow_models_run(width):
    torch.manual_seed(0)
    model = LIAX(width).eval()
    x = torch.rand(2, 3, 512, 512) * 2 - 1
    with torch.inference_mode():
        source = model.encode_source(x[:1])
        alpha = model.encode_motion(x)
        out = model.render(source, alpha_drive=alpha, alpha_start=alpha[:1])
    assert out.shape == (2, 3, 512, 512) and torch.isfinite(out).all()
    assert source.z.shape == (1, int(512 * width)) and alpha.shape == (2, 40)



@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_forms_and_folded_weights_meet_golden_tolerance(golden_state, golden, golden_edit, channels_last):
    """The GPU's fast path (stencil filters, small-map convs as matrix products, upsampling convs
    in phases, scales and demodulation energies folded into the weights) is as exact as the
    reference forms."""
    from liveanim.engines.torch_engine.backend import GPU_FORMS
    from liveanim.model.folding import fold_for_inference

    model = LIAX(0.5).eval()
    model.load_state_dict(golden_state, strict=True)
    fold_for_inference(model, GPU_FORMS, channels_last=channels_last)
    assert all(m.scale == 1.0 for m in model.modules() if hasattr(m, "scale")), "every scale is folded"
    in_phases = [side for side, layer in model.dec.upsampling_convs() if layer.phase_weight is not None]
    assert in_phases == [128, 256, 512]
    with torch.inference_mode():
        source = model.encode_source(to_model_input(golden["source"]))
        alpha = model.encode_motion(to_model_input(golden["driving"][:1]))
        assert (source.z - torch.from_numpy(golden["z_source"])).abs().max() <= CODE_TOL
        assert (alpha - torch.from_numpy(golden["alpha_drive"][:1])).abs().max() <= CODE_TOL
        assert_image_close(model.render(source, edit=golden_edit), golden["edit"])


def test_batched_styles_equal_layer_by_layer_and_share_the_weights():
    """Folding computes every layer's style and demodulation in a few batched products (0.6 ms
    less per frame on an H100): the same numbers as layer by layer, no weight stored twice."""
    from liveanim.model.folding import fold_for_inference

    torch.manual_seed(0)
    model = LIAX(0.125).double().eval()
    z = torch.randn(2, model.latent_dim, dtype=torch.float64)
    with torch.inference_mode():
        layer_by_layer = model.dec.styles(z)
        fold_for_inference(model)
        batched = model.dec.styles(z)
    bank = model.dec.bank
    assert bank is not None and len(batched) == len(layer_by_layer) == 71
    for conv, expected in layer_by_layer.items():
        torch.testing.assert_close(batched[conv].scale, expected.scale, rtol=1e-12, atol=1e-12)
        if conv.demodulate:
            torch.testing.assert_close(batched[conv].demod, expected.demod, rtol=1e-12, atol=1e-12)
        else:
            assert batched[conv].demod is None
        assert conv.modulation.weight.untyped_storage().data_ptr() == bank.weight.untyped_storage().data_ptr()
    assert not any(".bank." in name for name in model.state_dict()), "the bank is not saved"


def test_a_range_of_stages_gets_the_styles_of_its_layers_alone():
    """A renderer compiled in parts computes each part's styles from the bank's rows of its layers:
    exactly those layers' styles, the same numbers as layer by layer, whatever the range."""
    from liveanim.model.folding import fold_for_inference

    torch.manual_seed(0)
    model = LIAX(0.125).double().eval()
    z = torch.randn(2, model.latent_dim, dtype=torch.float64)
    convs = model.dec.modulated_convs()
    with torch.inference_mode():
        layer_by_layer = model.dec.styles(z)
        fold_for_inference(model)
        for first, stop in ((0, 1), (0, 3), (2, 5), (3, 4), (6, 7), (0, 7)):
            part = model.dec.styles(z, first, stop)
            stages = [model.dec.stage(index) for index in range(first, stop)]
            expected = [conv for conv in convs if any(_within(conv, stage) for stage in stages)]
            if first == 0:
                expected.insert(0, model.dec.conv1.conv)
            assert list(part) == expected, (first, stop)
            for conv in expected:
                torch.testing.assert_close(part[conv].scale, layer_by_layer[conv].scale, rtol=1e-12, atol=1e-12)
                if conv.demodulate:
                    torch.testing.assert_close(part[conv].demod, layer_by_layer[conv].demod, rtol=1e-12, atol=1e-12)


def _within(layer: torch.nn.Module, stage: tuple[torch.nn.Module | None, ...]) -> bool:
    return any(module is not None and any(layer is m for m in module.modules()) for module in stage)


def test_convolutions_as_matrix_products_and_sums_of_products_are_exact():
    """The patch-matrix form equals F.conv2d for 1x1 and 3x3 convs, batched, either layout, and
    so does the sum of products of a 1x1 conv of an RGB input, whose result is channels-last."""
    from liveanim.model.layers import KernelForms, conv2d

    gemm = KernelForms(gemm_max_side=16)
    for kernel, layout in [(3, torch.contiguous_format), (1, torch.contiguous_format), (3, torch.channels_last)]:
        x = torch.randn(2, 24, 16, 12, dtype=torch.float64)
        weight = torch.randn(40, 24, kernel, kernel, dtype=torch.float64).contiguous(memory_format=layout)
        bias = torch.randn(40, dtype=torch.float64)
        expected = F.conv2d(x, weight, bias, padding=kernel // 2)
        actual = conv2d(x, weight, gemm, bias, padding=kernel // 2)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)

    rgb = torch.randn(2, 3, 20, 12, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(40, 3, 1, 1, dtype=torch.float64)
    for bias in (None, torch.randn(40, dtype=torch.float64)):
        actual = conv2d(rgb, weight, KernelForms(pointwise_max_in=3), bias)
        assert actual.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(actual, F.conv2d(rgb, weight, bias), rtol=1e-12, atol=1e-12)


def test_channels_last_group_norm_and_stencil_filters_are_exact():
    """The compiler's forms compute what the reference forms (NCHW GroupNorm, depthwise and
    transposed depthwise convs) compute, in either layout, and keep channels-last maps so."""
    from liveanim.model.layers import Blur, GroupNorm, KernelForms, ModulatedConv2d, Upsample

    stencil = KernelForms(filters="stencil")
    x = torch.randn(2, 64, 12, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    norm = GroupNorm(32, 64).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    out = norm(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.group_norm(x.contiguous(), 32, norm.weight, norm.bias, norm.eps))

    for reference in (Upsample().double(), Blur(pad=2).double(), Blur(pad=1, gain=4.0).double()):
        fast = copy.deepcopy(reference)
        fast.forms = stencil
        for layout in (torch.contiguous_format, torch.channels_last):
            out = fast(x.contiguous(memory_format=layout))
            assert out.is_contiguous(memory_format=layout)
            torch.testing.assert_close(out, reference(x.contiguous()))

    conv = ModulatedConv2d(64, 32, 3, style_dim=16, upsample=True).double()
    fast = copy.deepcopy(conv)
    fast.forms = stencil
    style = torch.randn(2, 16, dtype=torch.float64)
    out = fast(x, fast.modulate(style))
    assert out.shape == (2, 32, 24, 20)
    torch.testing.assert_close(out, conv(x.contiguous(), conv.modulate(style)))


def test_upsampling_convs_in_phases_are_exact():
    """An upsampling conv run at its input's resolution in four phases computes what the reference
    computes, border pixels included (where zero padding breaks the rewrite), on odd sizes, in
    either filter form and layout."""
    from liveanim.model.layers import FILTER_FORMS, ConvLayer, KernelForms, phase_kernels, set_kernel_forms

    torch.manual_seed(0)
    for filters in FILTER_FORMS:
        reference = ConvLayer(16, 8, 3, upsample=True).double()
        with torch.no_grad():
            reference[2].bias.normal_()
        fast = copy.deepcopy(reference)
        set_kernel_forms(fast, KernelForms(filters=filters))
        fast.phase_weight = phase_kernels(fast[1].weight * fast[1].scale)
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 16, 6, 5, dtype=torch.float64).contiguous(memory_format=layout)
            torch.testing.assert_close(fast(x), reference(x.contiguous()), rtol=1e-12, atol=1e-12)


def test_eager_forms_are_exact_fold_where_the_weight_is_smaller_and_stay_out_of_exports(folded_convs):
    """The uncompiled GPU forms (modulation, demodulation, gain and a residual's divisor in the
    weight, GroupNorm in one pass, box blurs after transposed convs, warped maps made channels-last)
    compute what the reference forms compute, in float64, batched or not, in either layout. A batch
    of 1 folded_convs where the weight is smaller than the map, and an exported graph (what Inductor
    compiles) never folded_convs."""
    from liveanim.model.decoder import FlowResBlock, ResBlock, ToFlow
    from liveanim.model.layers import KernelForms, Modulation, ModulatedConv2d, StyledConv, set_kernel_forms

    torch.manual_seed(0)
    eager = KernelForms(filters="stencil", eager_forms=True)

    def styles_of(module: torch.nn.Module, latent: torch.Tensor) -> dict:
        return {conv: conv.modulate(latent) for conv in module.modules() if isinstance(conv, ModulatedConv2d)}

    def batched(styles: dict, batch: int) -> dict:
        return {conv: Modulation(*(t.expand(batch, -1) if t is not None else None for t in m)) for conv, m in styles.items()}

    for reference in (FlowResBlock(16, 8), ResBlock(16), StyledConv(16, 8, 3, 8, upsample=True)):
        with torch.no_grad():
            for parameter in reference.parameters():
                parameter.normal_(0.0, 0.5)
        reference = reference.double()
        fast = copy.deepcopy(reference)
        set_kernel_forms(fast, eager)
        latent = torch.randn(1, 8, dtype=torch.float64)
        for batch, side, layout in [(1, 24, torch.contiguous_format), (1, 24, torch.channels_last),
                                    (2, 24, torch.channels_last), (1, 6, torch.channels_last)]:
            x = torch.randn(batch, 16, side, side - 1, dtype=torch.float64).contiguous(memory_format=layout)
            if isinstance(reference, ResBlock):
                expected, actual = reference(x.contiguous()), fast(x)
            else:
                expected = reference(x.contiguous(), batched(styles_of(reference, latent), batch))
                actual = fast(x, batched(styles_of(fast, latent), batch))
            torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    # FlowResBlock's two convs and the upsampling conv, at batch 1 on the larger map, in two layouts
    assert len(folded_convs) == 3 * 2

    reference = ToFlow(16, 8).double()  # grid sampling between an NCHW source map and channels-last maps
    fast = copy.deepcopy(reference)
    set_kernel_forms(fast, eager)
    h, feat = torch.randn(1, 16, 12, 12, dtype=torch.float64), torch.randn(1, 16, 12, 12, dtype=torch.float64)
    latent = torch.randn(1, 8, dtype=torch.float64)
    expected = reference(h, styles_of(reference, latent), feat)
    actual = fast(h.contiguous(memory_format=torch.channels_last), styles_of(fast, latent), feat)
    assert actual[1].is_contiguous(memory_format=torch.channels_last)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)

    block = FlowResBlock(16, 8).eval().requires_grad_(False)
    set_kernel_forms(block, eager)
    styles = styles_of(block, torch.randn(1, 8))

    class Traced(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return block(x, styles)

    x = torch.randn(1, 16, 24, 20)
    folded_convs.clear()
    exported = torch.export.export(Traced(), (x,), strict=False)
    assert folded_convs == [], "an exported graph keeps the unfolded form"
    torch.testing.assert_close(exported.module()(x), Traced()(x), rtol=1e-5, atol=1e-5)
    assert len(folded_convs) == 2, "the same block called eagerly folded_convs"


def test_a_bf16_map_on_the_cpu_is_warped_as_closely_as_bf16_holds_the_result():
    """PyTorch's CPU grid sampling computes a bf16 map's positions and weights in bf16: at 256x256
    its values came out off by more than their size, and the bf16 model's output was NaN. Against
    float64 on the same bf16 inputs, the warp is off by no more than the output's own rounding."""
    from liveanim.model.decoder import warp

    torch.manual_seed(0)
    feat = torch.randn(1, 32, 256, 256).bfloat16()
    flow = torch.randn(1, 2, 256, 256).bfloat16()
    exact = warp(feat.double(), flow.double())
    warped = warp(feat, flow)
    assert warped.dtype == torch.bfloat16
    bf16_rounding = 2.0**-8 * exact.abs()  # half a unit in the last place
    float32_positions = 1e-3  # float32 against float64 was off by 1.2e-4 at most here
    assert ((warped.double() - exact).abs() <= bf16_rounding + float32_positions).all()


def test_loading_a_checkpoint_leaves_the_compiler_unloaded():
    """Building the model for a checkpoint touches no random fill or arithmetic on the meta
    device: those load torch's compiler, seconds of every start (the live loop loads it later,
    in the background)."""
    script = (
        "import sys, torch\n"
        "from liveanim.model import LIAX\n"
        "state = {name: torch.zeros(shape) for name, shape in LIAX.expected_layout(0.125, 40).items()}\n"
        "LIAX.from_checkpoint(state)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "False", result.stdout + result.stderr
