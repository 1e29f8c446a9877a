"""`portable-opset21`: the main graph (or the int4 variant's) with the opset-23 GenAI ops replaced by
their ONNX function bodies, for runtimes without them (onnxruntime's OpenVINO provider: see
tests/test_openvino_provider.py for it running on that provider)."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optimum_onnx23.errors import VariantNotApplicableError
from optimum_onnx23.variants import attach_builtin_variants, choose_variant, list_variants, select_variant
from optimum_onnx23.variants.folder import load_model, strip_folder
from optimum_onnx23.variants.producers import portable_opset21
from optimum_onnx23.variants.producers._expand import newer_ops
from optimum_onnx23.variants.runtime import select_for_providers

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")
GENAI_OPS = ("Attention", "RMSNormalization", "RotaryEmbedding")
INT4 = {"ort-cpu-int4": {"calibration": False}}


def copy_of(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def selected(folder: Path, variant: str) -> onnx.ModelProto:
    return ir.serde.serialize_model(select_variant(load_model(folder / "model.onnx"), variant=variant, copy=False))


def run(model: onnx.ModelProto, folder: Path, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def padded_step(model: onnx.ModelProto, past: int = 3, seq: int = 4) -> dict:
    """Two rows (row 0 left-padded by 2) of `seq` new tokens after `past` random cached positions."""
    rng = np.random.default_rng(0)
    mask = np.ones((2, past + seq), np.int64)
    mask[0, :2] = 0
    feeds = {"input_ids": rng.integers(0, 300, (2, seq)), "attention_mask": mask,
             "position_ids": np.clip(mask.cumsum(-1) - 1, 0, None)[:, past:]}
    for value in model.graph.input:
        if value.name.startswith("past_key_values"):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            feeds[value.name] = rng.standard_normal((2, dims[1], past, dims[3])).astype(np.float32)
    return feeds


def assert_same_outputs(got: list, want: list, feeds: dict, atol: float) -> None:
    valid = feeds["attention_mask"].astype(bool)
    seq = feeds["input_ids"].shape[1]
    np.testing.assert_allclose(got[0][valid[:, -seq:]], want[0][valid[:, -seq:]], atol=atol, rtol=0)
    for g, w in zip(got[1:], want[1:]):  # present K/V at the positions the mask keeps
        np.testing.assert_allclose(np.moveaxis(g, 2, 1)[valid], np.moveaxis(w, 2, 1)[valid], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def portable(exported_dir, tmp_path_factory) -> tuple[Path, dict]:
    folder = copy_of(exported_dir("bundled"), tmp_path_factory.mktemp("portable") / "bundled")
    return folder, attach_builtin_variants(folder, ["portable-opset21"])


@pytest.fixture(scope="module")
def with_int4(exported_dir, tmp_path_factory) -> tuple[Path, dict]:
    """int4 attached after portable-opset21: the portable form of int4 is made all the same."""
    folder = copy_of(exported_dir("bundled"), tmp_path_factory.mktemp("portable-int4") / "bundled")
    attach_builtin_variants(folder, ["portable-opset21"])
    return folder, attach_builtin_variants(folder, ["ort-cpu-int4"], INT4)


def test_portable_graph_has_only_opset21_ops_and_computes_the_main_graph(portable, exported_dir):
    folder, report = portable
    entry = report["variants"]["portable-opset21"]
    assert entry["owned_bytes"] == 0 and entry["data_bytes_added"] == 0  # reads the main graph's weights
    main = onnx.load(str(exported_dir("bundled") / "model.onnx"), load_external_data=False)
    main_ops = Counter(n.op_type for n in main.graph.node)
    model = selected(folder, "portable-opset21")
    ops = Counter(n.op_type for n in model.graph.node)
    assert newer_ops(ir.serde.deserialize_graph(model.graph), 21) == [] and not ops.keys() & set(GENAI_OPS)
    # Each GenAI op became its body: Attention's two MatMuls, RMSNormalization's ReduceMean ...
    assert ops["MatMul"] == main_ops["MatMul"] + 2 * main_ops["Attention"]
    assert ops["ReduceMean"] == main_ops["RMSNormalization"] and ops["Softmax"] == main_ops["Attention"]
    # ... folded: no Range/Size computing the ReduceMean axes, and no zero-length Split output left.
    assert ops["Size"] == 0 and ops["Range"] == main_ops["Range"]
    for node in model.graph.node:
        if node.op_type == "Split" and len(node.input) > 1 and node.input[1]:
            sizes = next((onnx.numpy_helper.to_array(a.t) for n in model.graph.node for a in n.attribute
                          if n.output[0] == node.input[1] and a.name == "value"), None)
            assert sizes is None or 0 not in sizes.tolist()
    assert f"{main_ops['Attention']} Attention" in (info := list_variants(load_model(folder / "model.onnx"))[0]).description
    assert info.providers == ["OpenVINOExecutionProvider"]
    feeds = padded_step(model)
    assert_same_outputs(run(model, folder, feeds), run(main, exported_dir("bundled"), feeds), feeds, atol=1e-5)


def test_portable_matches_onnx_reference_evaluator(portable):
    """The bodies are the specification's own: onnx's reference evaluator on the portable graph
    (which never sees an opset-23 op) agrees with onnxruntime's kernels on the main graph."""
    from onnx.reference import ReferenceEvaluator

    folder, _ = portable
    model = selected(folder, "portable-opset21")
    onnx.load_external_data_for_model(model, str(folder))
    feeds = padded_step(model)
    got = ReferenceEvaluator(model).run(None, feeds)
    main = ir.serde.serialize_model(select_variant(load_model(folder / "model.onnx"), variant="main", copy=False))
    assert_same_outputs(got, run(main, folder, feeds), feeds, atol=1e-5)


def test_openvino_sessions_pick_portable_and_cpu_ones_do_not(portable):
    folder, _ = portable
    assert select_for_providers(folder / "model.onnx", ["OpenVINOExecutionProvider", "CPUExecutionProvider"])[1] == "portable-opset21"
    assert select_for_providers(folder / "model.onnx", ["CPUExecutionProvider"])[1] is None


def test_int4_gets_a_portable_form_reading_its_weights(with_int4, tmp_path, caplog):
    folder, report = with_int4
    derived = "portable-opset21.ort-cpu-int4"
    assert report["variants"][derived]["owned_bytes"] == 0 and report["variants"][derived]["data_bytes_added"] == 0
    infos = {i.name: i for i in list_variants(load_model(folder / "model.onnx"))}
    assert set(infos) == {"portable-opset21", "ort-cpu-int4", derived}
    assert set(infos["ort-cpu-int4"].owned_initializers) <= set(infos[derived].consumes)
    assert infos[derived].priority > infos["portable-opset21"].priority
    assert [op for op in infos[derived].ops if not op.startswith("ai.onnx::")] == [
        "com.microsoft::MatMulNBits", "com.microsoft::SkipSimplifiedLayerNormalization"]
    # The choice for an OpenVINO session (onnxruntime-openvino runs it: tests/test_openvino_provider.py).
    assert choose_variant(list(infos.values()), ["OpenVINOExecutionProvider"]).name == derived
    # It computes what the int4 variant computes (onnxruntime CPU runs both).
    int4, portable = selected(folder, "ort-cpu-int4"), selected(folder, derived)
    assert not {n.op_type for n in portable.graph.node} & set(GENAI_OPS)
    feeds = padded_step(portable)
    assert_same_outputs(run(portable, folder, feeds), run(int4, folder, feeds), feeds, atol=1e-4)
    # Stripping int4 strips the form that reads its weights, saying so; portable-opset21 stays.
    copy = copy_of(folder, tmp_path / "copy")
    with caplog.at_level(logging.WARNING):
        assert set(strip_folder(copy / "model.onnx", ["ort-cpu-int4"])) == {derived, "ort-cpu-int4"}
    assert f"Also stripping {derived}" in caplog.text
    assert [i.name for i in list_variants(load_model(copy / "model.onnx"))] == ["portable-opset21"]


def test_static_cache_export_is_refused_with_the_op_named(exported_dir):
    model = load_model(exported_dir("bundled", "--cache", "static", "--max-cache-len", "32") / "model.onnx")
    with pytest.raises(VariantNotApplicableError, match="TensorScatter is newer than opset 21"):
        portable_opset21.produce(model)
