"""ONNX export: valid graphs with external weights, the contract's names and shapes, Q, fp16 policy.

The fp32 export comes from the API, the fp16 one from README's command line; both of the same
seeded width-0.125 weights, so that one can be checked against the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from liveanim.contract import BATCH, FEATURE_NAMES, GRAPH_NAMES, MOTION_ENCODER, RENDERER, SOURCE_ENCODER, concat_batches, graph_specs, split_batch
from liveanim.engines.base import EngineConfig
from liveanim.engines.loading import load_model
from liveanim.errors import EngineError
from liveanim.export import DIRECTIONS_FILE, ExportConfig, export_model, read_manifest, state_dict_sha256
from liveanim.export.graphs import smooth_images
from liveanim.export.onnx_export import module_path
from liveanim.export.precision import half_model, keeps_fp32
from liveanim.export.verify import TOLERANCES, compare_outputs, run_onnx_cpu
from liveanim.model.decoder import ToFlow

TINY_FEATURES = [(64, 8, 8), (64, 16, 16), (64, 32, 32), (64, 64, 64), (32, 128, 128), (16, 256, 256), (8, 512, 512)]


@pytest.fixture(scope="module")
def seeded_model():
    """The weights `--seeded 0.125` exports."""
    return load_model(EngineConfig(seeded=True, width=0.125))


@pytest.fixture(scope="module")
def tiny_export(seeded_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export-fp32")
    export_model(seeded_model, folder, ExportConfig(precision="fp32"))
    return folder


@pytest.fixture(scope="module")
def tiny_fp16_export(seeded_fp16_export) -> Path:
    return seeded_fp16_export


def _load_graph(folder: Path, name: str) -> onnx.ModelProto:
    return onnx.load(str(folder / f"{name}.onnx"), load_external_data=False)


def _shape(value: onnx.ValueInfoProto) -> tuple:
    return tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_graphs_are_valid_onnx_with_external_weights_and_standard_ops(tiny_export, name):
    path = tiny_export / f"{name}.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    assert (tiny_export / f"{name}.onnx.data").stat().st_size > 100_000, "weights belong in the external file"
    graph = _load_graph(tiny_export, name)
    assert all(o.version >= 17 for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}, "no custom ops"
    initializers = {i.name for i in graph.graph.initializer}
    conv_weights = [n.input[1] for n in graph.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert conv_weights and all(w in initializers for w in conv_weights), "conv weights must be constants"


def test_renderer_uses_native_grid_sample_named_by_module(tiny_export):
    nodes = _load_graph(tiny_export, "renderer").graph.node
    grid_samples = [n for n in nodes if n.op_type == "GridSample"]
    assert len(grid_samples) == 7
    for node in grid_samples:
        assert node.name.startswith("dec.flow") and keeps_fp32(node.name)
        assert {a.name: a for a in node.attribute}["align_corners"].i == 1


def test_manifest_and_graphs_follow_the_contract(tiny_export, seeded_model):
    manifest = read_manifest(tiny_export)
    expected = graph_specs(seeded_model.latent_dim, 40, TINY_FEATURES)
    assert {name: g.spec for name, g in manifest.graphs.items()} == expected
    assert expected["source_encoder"].output_names == ["z", "alpha", *FEATURE_NAMES]
    assert expected["renderer"].input_names == ["z_target", *FEATURE_NAMES]
    assert expected["motion_encoder"].inputs[0].shape == (BATCH, 3, 512, 512)
    for name, graph in manifest.graphs.items():
        proto = _load_graph(tiny_export, name).graph
        assert [(v.name, _shape(v)) for v in proto.input] == [(t.name, t.shape) for t in graph.spec.inputs]
        assert [(v.name, _shape(v)) for v in proto.output] == [(t.name, t.shape) for t in graph.spec.outputs]
    assert manifest.model_sha256 == state_dict_sha256(seeded_model.state_dict())
    assert (manifest.width, manifest.latent_dim, manifest.precision, manifest.opset) == (0.125, 64, "fp32", 18)
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest.tools)
    raw = json.loads((tiny_export / "manifest.json").read_text())
    assert raw["graphs"]["renderer"]["inputs"][0] == {"name": "z_target", "shape": [BATCH, 64], "dtype": "float32"}


def test_export_measured_its_own_errors_within_fp32_tolerance(tiny_export):
    errors = {name: g.errors for name, g in read_manifest(tiny_export).graphs.items()}
    assert errors["motion_encoder"]["alpha"]["max"] <= TOLERANCES["fp32"].code_max
    assert errors["source_encoder"]["feat6"]["mean"] <= TOLERANCES["fp32"].image_mean
    assert errors["renderer"]["image"]["p999"] <= TOLERANCES["fp32"].image_p999


def test_directions_file_is_the_models_q(tiny_export, seeded_model):
    q = np.load(tiny_export / DIRECTIONS_FILE)
    assert q.dtype == np.float32 and q.shape == (64, 40)
    np.testing.assert_array_equal(q, seeded_model.directions().numpy())


def test_incomplete_export_is_refused(tiny_export, tmp_path):
    with pytest.raises(EngineError, match="no complete export"):
        read_manifest(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((tiny_export / "manifest.json").read_text())
    with pytest.raises(EngineError, match="misses"):
        read_manifest(broken)


def test_fp16_export_keeps_encoders_and_flows_in_fp32(tiny_fp16_export):
    manifest = read_manifest(tiny_fp16_export)
    assert manifest.precision == "fp16"
    assert {n: g.precision for n, g in manifest.graphs.items()} == {
        "source_encoder": "fp32", "motion_encoder": "fp32", "renderer": "fp16"}
    for name in ("source_encoder", "motion_encoder"):
        assert {i.data_type for i in _load_graph(tiny_fp16_export, name).graph.initializer} <= {
            onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    renderer = _load_graph(tiny_fp16_export, "renderer").graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*renderer.value_info, *renderer.input]}
    for node in (n for n in renderer.node if n.op_type == "GridSample"):
        assert [dtypes[i] for i in node.input] == [onnx.TensorProto.FLOAT] * 2, node.name
    half = [i for i in renderer.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(half) > len(renderer.initializer) // 2
    assert [_shape(v) for v in renderer.output] == [(BATCH, 3, 512, 512)]
    assert renderer.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "I/O stays float32"


def test_fp16_export_measured_error_is_within_its_tolerance(tiny_fp16_export):
    errors = read_manifest(tiny_fp16_export).graphs["renderer"].errors["image"]
    tolerance = TOLERANCES["fp16"]
    assert 0 < errors["mean"] <= tolerance.image_mean and errors["p999"] <= tolerance.image_p999


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_fp16_graphs_pass_the_full_onnx_check(tiny_fp16_export, name):
    """The check that rejected every fp16 export (the flow heads' style layer: "Gemm ... B has
    inconsistent type tensor(float)")."""
    onnx.checker.check_model(str(tiny_fp16_export / f"{name}.onnx"), full_check=True)


def _pipeline_inputs(folder: Path) -> dict[str, tuple[torch.Tensor, ...]]:
    """A source and two driving frames through an export's encoders (ONNX Runtime, CPU): the
    inputs of each graph."""
    images = smooth_images(3, seed=4)
    manifest = read_manifest(folder)
    source = run_onnx_cpu(folder / "source_encoder.onnx", manifest.graphs[SOURCE_ENCODER].spec, (images[:1],))
    motion = run_onnx_cpu(folder / "motion_encoder.onnx", manifest.graphs[MOTION_ENCODER].spec, (images[1:],))
    q = torch.from_numpy(np.load(folder / DIRECTIONS_FILE))
    z_target = source["z"] + (source["alpha"] + motion["alpha"] - motion["alpha"][:1]) @ q.T
    return {SOURCE_ENCODER: (images[:1],), MOTION_ENCODER: (images[1:],),
            RENDERER: (z_target, *(source[name] for name in FEATURE_NAMES))}


def test_fp16_export_runs_within_its_bound_of_the_fp32_export(tiny_export, tiny_fp16_export):
    """Both exports in ONNX Runtime (CPU) on the same inputs: the fp32 encoders give the same codes
    and maps, and the fp16 renderer's image is within the fp16 tolerance of the fp32 renderer's
    (scaled mean <= 5e-2, p99.9 <= 0.5; measured here: mean 8e-3, p99.9 9e-2) yet not the same
    graph. The two folders hold the same weights."""
    assert read_manifest(tiny_export).model_sha256 == read_manifest(tiny_fp16_export).model_sha256
    inputs = _pipeline_inputs(tiny_export)
    for name in GRAPH_NAMES:
        specs = {folder: read_manifest(folder).graphs[name].spec for folder in (tiny_export, tiny_fp16_export)}
        fp32, fp16 = (run_onnx_cpu(folder / f"{name}.onnx", spec, inputs[name]) for folder, spec in specs.items())
        tolerance = TOLERANCES["fp16" if name == RENDERER else "fp32"]
        errors = compare_outputs(name, fp16, fp32, tolerance)
    assert errors["image"]["mean"] > 1e-4, "the fp16 renderer computes like the fp32 one: is it fp16 at all?"


def _float_types(graph: onnx.GraphProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(onnx.ModelProto(graph=graph, opset_import=[
        onnx.helper.make_opsetid("", 18)])).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *graph.input, *graph.output]}
    types |= {i.name: i.data_type for i in graph.initializer}
    return {name: t for name, t in types.items() if t in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}


def _ops_without_cpu_fp16_kernels(op_types: set[str]) -> set[str]:
    from onnxruntime.capi import _pybind_state

    half = {d.op_name for d in _pybind_state.get_all_opkernel_def()
            if d.provider == "CPUExecutionProvider" and d.domain in ("", "ai.onnx")
            and any("tensor(float16)" in allowed for allowed in d.type_constraints.values())}
    return op_types - half


def test_fp16_renderer_types_where_onnxruntime_cpu_cannot_check_them(tiny_fp16_export):
    """ONNX Runtime's CPU provider has no fp16 kernel for most of the renderer's ops (with
    onnxruntime 1.32: Add, Conv, ConvTranspose, Div, Gemm, InstanceNormalization, LeakyRelu,
    MatMul, Mul, Pow, Reciprocal, Sqrt); it runs them in fp32 between inserted casts, so the
    comparison above checks the graph's arithmetic, not fp16 rounding inside them. For those ops
    the graph's types are checked instead: fp16 everywhere but in the flow heads, fp32 there."""
    graph = _load_graph(tiny_fp16_export, "renderer").graph
    types = _float_types(graph)
    unchecked = _ops_without_cpu_fp16_kernels({node.op_type for node in graph.node})
    assert {"Conv", "Gemm", "InstanceNormalization"} <= unchecked, unchecked
    nodes = [node for node in graph.node if node.op_type in unchecked]
    for node in nodes:
        wanted = onnx.TensorProto.FLOAT if keeps_fp32(node.name) else onnx.TensorProto.FLOAT16
        edges = [name for name in (*node.input, *node.output) if name in types]
        assert edges and all(types[name] == wanted for name in edges), (node.name, [types[e] for e in edges])
    assert sum(keeps_fp32(node.name) for node in nodes) >= 7 * 3, "each flow head's conv, style and bias in fp32"


def test_half_model_is_a_copy_with_fp32_flow_heads(seeded_model):
    half = half_model(seeded_model)
    assert next(seeded_model.parameters()).dtype == torch.float32, "the original must not change"
    for path, module in half.named_modules():
        if isinstance(module, ToFlow):
            assert keeps_fp32(path) and module.conv.weight.dtype == torch.float32
    assert half.dec.conv1.conv.weight.dtype == torch.float16
    assert not keeps_fp32("dec.conv_512_2.0.conv1/node_conv") and keeps_fp32("dec.flow7.up/node_conv")


def test_verification_names_the_outputs_out_of_tolerance():
    reference = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    ok = compare_outputs("renderer", {"image": reference + 1e-6}, {"image": reference}, TOLERANCES["fp32"])
    assert ok["image"]["mean"] < 1e-5
    with pytest.raises(EngineError, match="image"):
        compare_outputs("renderer", {"image": reference + 0.1}, {"image": reference}, TOLERANCES["fp32"])
    with pytest.raises(EngineError, match="non-finite"):
        compare_outputs("renderer", {"image": reference * float("nan")}, {"image": reference}, TOLERANCES["fp16"])
    with pytest.raises(EngineError, match="alpha"):
        compare_outputs("motion_encoder", {"alpha": torch.ones(2, 40) * 1.01}, {"alpha": torch.ones(2, 40)},
                        TOLERANCES["fp32"])


def test_a_graph_the_checker_rejects_is_an_engine_error(tmp_path):
    """The fp16 export's old failure (an fp16 input into an fp32 Gemm) as the user sees it: our
    error, naming the file, not a traceback."""
    from onnx import helper

    from liveanim.export.verify import check_onnx

    a = helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [1, 4])
    b = helper.make_tensor("b", onnx.TensorProto.FLOAT, [4, 4], [0.0] * 16)
    graph = helper.make_graph([helper.make_node("Gemm", ["a", "b"], ["y"])], "mixed", [a], [y], [b])
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(EngineError, match=r"mixed.onnx is not valid ONNX.*inconsistent type"):
        check_onnx(path)


def test_module_path_from_exporter_scopes():
    assert module_path("['', 'model.dec', 'model.dec.flow2', 'grid_sampler']") == "dec.flow2"
    assert module_path("['', 'add_3']") == ""
    assert module_path(None) == ""


def test_split_batch_round_trip():
    spec = graph_specs(64, 40, TINY_FEATURES)["renderer"]
    tensors = {"z_target": torch.arange(5.0)[:, None].expand(5, 64),
               **{name: torch.zeros(1, *shape) for name, shape in zip(FEATURE_NAMES, TINY_FEATURES)}}
    parts = split_batch(spec, tensors, batch=5, size=2)
    assert [batch for _, batch in parts] == [2, 2, 1]
    assert all(part["feat0"].shape[0] == 1 for part, _ in parts), "shared source features are not split"
    joined = concat_batches(spec, [{"image": part["z_target"][:, :3]} for part, _ in parts])
    assert torch.equal(joined["image"], tensors["z_target"][:, :3])
