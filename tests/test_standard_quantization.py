"""The standard-op quantized variants `int4` / `int8` (`DequantizeLinear` + `MatMul`) on tiny
exports: the same codes, scales and zero points as `ort-cpu-int4` / `ort-cpu-int8`, which
onnxruntime's CPU provider turns back into the same `MatMulNBits` (weights compared byte for byte
after its graph optimizations); automatic selection prefers them where onnxruntime fuses them and
the contrib forms where it does not; our sessions set the fused kernels' accuracy level; OpenVINO
keeps their weights compressed. Quality on real text: tests/test_real_variants.py."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from optimum_onnx23.variants import attach_builtin_variants, select_for_providers
from optimum_onnx23.variants.folder import load_model
from optimum_onnx23.variants.producers._linear import find_linears, group_linears
from optimum_onnx23.variants.runtime import QDQ_ACCURACY_KEY, create_session

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")
CPU = ["CPUExecutionProvider"]
TWINS = {"int4": "ort-cpu-int4", "int8": "ort-cpu-int8"}  # standard form -> contrib form


def _feeds(session: ort.InferenceSession, ids: np.ndarray) -> dict:
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None].repeat(len(ids), 0)}
    for i in session.get_inputs():
        if i.name.startswith("past_"):
            feeds[i.name] = np.zeros((len(ids), i.shape[1], 0, i.shape[3]), np.float32)
    return {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}


@pytest.fixture(scope="module", params=["bundled", "gpt2"])  # gpt2: Conv1D as Gemm with a bias
def attached(request, exported_dir, tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("standard-quant") / request.param
    shutil.copytree(exported_dir(request.param), folder)
    return folder, attach_builtin_variants(folder, ["ort-cpu-int4", "int4", "ort-cpu-int8", "int8"])


def _fused(folder: Path, variant: str, tmp_path: Path) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs for `variant`, after its optimizations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{variant}.onnx")
    create_session(folder / "model.onnx", CPU, options, variant=variant)
    model = onnx.load(options.optimized_model_filepath, load_external_data=False)
    onnx.external_data_helper.load_external_data_for_model(model, str(folder))
    return model


def _nbits(model: onnx.ModelProto) -> dict[str, tuple[dict, list[np.ndarray]]]:
    initializers = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name != "weight_prepacked"}
            name = node.name.removesuffix("/MatMulAddFusion")  # a Gemm's bias Add fused in as well
            out[name] = (attrs, [numpy_helper.to_array(initializers[n]) for n in node.input[1:] if n in initializers])
    return out


@pytest.mark.parametrize("standard", list(TWINS))
def test_standard_form_is_dequantize_matmul_and_onnxruntime_fuses_it_into_the_contrib_kernels(attached, standard, tmp_path):
    folder, report = attached
    entry, twin = report["variants"][standard], report["variants"][TWINS[standard]]
    groups = group_linears(find_linears(load_model(folder / "model.onnx").graph), pack=standard == "int4")
    packed = sum(len(g) > 1 for g in groups)
    biases = sum(g[0].bias is not None for g in groups)  # Gemm's bias: an Add after the MatMul
    # int8 smooths every activation that has no bias (one Mul by its own 1 / s, as its twin does)
    smoothed = len(groups) - biases if standard == "int8" else 0
    ops = {"DequantizeLinear", "MatMul"} | ({"Constant", "Split"} if packed else set()) | ({"Add"} if biases else set()) | (
        {"Mul"} if smoothed else set())
    assert entry["ops"] == sorted(f"ai.onnx::{op}" for op in ops)  # no contrib op
    assert entry["nodes"] == 2 * len(groups) + biases + 2 * packed + smoothed
    assert entry["owned_bytes"] == twin["owned_bytes"]  # uint4 + zero points, or int8 without: the contrib form's bytes
    fused, contrib = _nbits(_fused(folder, standard, tmp_path)), _nbits(_fused(folder, TWINS[standard], tmp_path))
    assert len(fused) == len(groups) and fused.keys() == contrib.keys()
    for name, (attrs, arrays) in fused.items():
        assert attrs == contrib[name][0] and attrs["accuracy_level"] == 4, name
        for got, want in zip(arrays, contrib[name][1]):
            assert np.array_equal(got, want), name


def test_selection_prefers_the_standard_form_where_onnxruntime_fuses_it(attached, monkeypatch, caplog):
    folder, _ = attached
    assert select_for_providers(folder / "model.onnx", CPU)[1] == "int4"
    monkeypatch.setattr(ort, "__version__", "1.24.4")  # fuses 4-bit DequantizeLinear only
    with caplog.at_level(logging.WARNING):
        assert select_for_providers(folder / "model.onnx", CPU)[1] == "ort-cpu-int4"
    assert "does not fuse" in caplog.text and "using ort-cpu-int4 instead" in caplog.text


def test_standard_form_alone_on_an_old_onnxruntime_runs_unfused_with_a_warning(exported_dir, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "m"
    shutil.copytree(exported_dir("bundled"), folder)
    attach_builtin_variants(folder, ["int8"], {"int8": {"include_lm_head": False}})
    monkeypatch.setattr(ort, "__version__", "1.23.2")
    with caplog.at_level(logging.WARNING):
        assert select_for_providers(folder / "model.onnx", CPU)[1] == "int8"
    assert "runs unfused" in caplog.text


def test_sessions_set_the_fused_accuracy_level_unless_the_caller_did(attached):
    folder, _ = attached
    options = ort.SessionOptions()
    create_session(folder / "model.onnx", CPU, options)
    assert options.get_session_config_entry(QDQ_ACCURACY_KEY) == "4"
    options = ort.SessionOptions()
    options.add_session_config_entry(QDQ_ACCURACY_KEY, "1")
    create_session(folder / "model.onnx", CPU, options)
    assert options.get_session_config_entry(QDQ_ACCURACY_KEY) == "1"


@pytest.mark.interop
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed (the test extra has it)")
def test_openvino_keeps_the_standard_int4_weights_compressed(attached, tmp_path):
    import openvino as ov

    folder, _ = attached
    selected, chosen = select_for_providers(folder / "model.onnx", CPU, variant="int4")
    path = folder / "selected-int4.onnx"  # beside model.onnx_data, which its initializers reference
    path.write_bytes(selected.model)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    weights = []
    for op in compiled.get_runtime_model().get_ops():
        if op.get_rt_info()["layerType"].astype(str) == "FullyConnected":
            weights.append(op.input(1).get_element_type().get_type_name())
    groups = group_linears(find_linears(load_model(folder / "model.onnx").graph), pack=True)
    assert len(weights) == len(groups) and set(weights) <= {"u4", "i8"} and "u4" in weights, weights
    session, _ = create_session(folder / "model.onnx", CPU, variant="int4")
    ids = np.array([[1, 17, 43, 99, 250, 7, 8, 12]], np.int64)
    feeds = _feeds(session, ids)
    want = session.run(["logits"], feeds)[0]
    request = compiled.create_infer_request()
    got = request.infer({k: v for k, v in feeds.items() if k in {i.get_any_name() for i in compiled.inputs}})[compiled.output("logits")]
    # onnxruntime quantizes activations to int8 per block (accuracy level 4); OpenVINO computes differently
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), np.abs(got - want).max()
