"""Activation smoothing and channel reordering (`variants/producers/_smooth.py`) on the bundled
tiny Llama: the transforms move per-channel factors from a linear's activation into its weight
rows, so with the weights left in fp32 (`form="float"`) the variant computes the main graph's
function (logits within 1e-5); the main graph's nodes and weights are not touched; the int8
variants carry them by default (a `Mul` by their own `1 / s` before each matmul)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optimum_onnx23.variants import attach_builtin_variants, list_variants
from optimum_onnx23.variants.folder import load_model
from optimum_onnx23.variants.producers._quantized import Scheme, quantized_region
from optimum_onnx23.variants.producers._smooth import channel_transform, smoothing_scales
from optimum_onnx23.variants.producers.spec import VariantSpec
from optimum_onnx23.variants.runtime import create_session

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")
CPU = ["CPUExecutionProvider"]


def _logits(model_path, variant: str, ids: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session, chosen = create_session(model_path, CPU, options, variant=variant)
    assert chosen == (None if variant == "main" else variant)
    inputs = {i.name: i for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for name, info in inputs.items():
        if name.startswith("past_"):
            feeds[name] = np.zeros((1, info.shape[1], 0, info.shape[3]), np.float32)
    return session.run(["logits"], {k: v for k, v in feeds.items() if k in inputs})[0]


def test_scales_are_positive_and_balance_activation_and_weight():
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=64)).astype(np.float32) + 0.1
    x[5] = 300.0  # an outlier channel
    x[9] = 0.0  # a dead one
    w = rng.normal(size=(64, 16)).astype(np.float32)
    s = smoothing_scales(x, w, 0.5)
    assert s.dtype == np.float32 and np.all(s > 0) and np.all(np.isfinite(s)) and s[9] == 1.0
    # alpha 0.5: the smoothed activation maximum equals the scaled weight row's maximum, up to one
    # common factor (the normalisation)
    ratio = (x / s)[np.arange(64) != 9] / (np.abs(w).max(1) * s)[np.arange(64) != 9]
    assert np.allclose(ratio, ratio[0], rtol=1e-4)
    t = channel_transform(x, w, 0.5, reorder=True)
    assert sorted(t.perm.tolist()) == list(range(64))
    assert np.allclose(t.restore(t.weight(w), False), w, rtol=1e-6)


@pytest.mark.parametrize("reorder", [False, True])
def test_fold_in_fp32_is_exact_and_leaves_the_main_graph_alone(exported_dir, tmp_path, reorder):
    folder = tmp_path / "m"
    shutil.copytree(exported_dir("bundled"), folder)
    model = load_model(folder / "model.onnx")
    main_nodes = [(n.op_type, [v.name for v in n.inputs if v is not None]) for n in model.graph]
    main_weights = {name: v.const_value.numpy().copy() for name, v in model.graph.initializers.items()}
    rng = np.random.default_rng(0)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    windows = [rng.integers(0, vocab, 48, dtype=np.int64) for _ in range(3)]
    body, owned, counts = quantized_region(
        model, "smooth-check", Scheme(8, 32, True), 4, calibration=windows, fusions=False, form="float", smooth=0.5, reorder=reorder,
    )
    assert counts["smoothing"]["groups"] == counts["matmuls"] > 0
    assert sum(n.op_type == "Mul" for n in body) == counts["matmuls"]  # one per matmul, nothing else
    assert sum(n.op_type == "Gather" for n in body) == (counts["matmuls"] if reorder else 0)
    VariantSpec(name="smooth-check", body=body, providers=CPU, opset_imports={"": model.opset_imports[""]}, owned=owned).attach_to(model)
    # the main graph's nodes and weights are as they were: the variant owns its transformed copies
    assert [(n.op_type, [v.name for v in n.inputs if v is not None]) for n in model.graph] == main_nodes
    for name, array in main_weights.items():
        np.testing.assert_array_equal(model.graph.initializers[name].const_value.numpy(), array)
    ir.save(model, folder / "model.onnx", external_data="model.onnx_data")
    ids = rng.integers(0, vocab, (1, 40), dtype=np.int64)
    want = _logits(folder / "model.onnx", "main", ids)
    got = _logits(folder / "model.onnx", "smooth-check", ids)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_int8_variants_smooth_by_default(exported_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(exported_dir("bundled"), folder)
    report = attach_builtin_variants(folder, ["int8"])
    model = load_model(folder / "model.onnx")
    info = next(i for i in list_variants(model) if i.name == "int8")
    assert "smoothed" in info.description and "lm_head in blocks of 32" in info.description
    function = next(f for f in model.functions.values() if "int8" in f.name)
    muls = [n for n in function if n.op_type == "Mul"]
    matmuls = [n for n in function if n.op_type == "MatMul"]
    assert len(muls) == len(matmuls) and all(m.outputs[0].uses()[0].node.op_type == "MatMul" for m in muls)
    # the attach report and the model card say so
    assert report["variants"]["int8"]["smoothing"] == {"alpha": 0.5, "reorder": False, "groups": len(matmuls)}
    from optimum_onnx23.publish.card import _quantization_lines

    assert f"`int8`: activations smoothed per input channel before {len(matmuls)} matmuls" in "".join(_quantization_lines({"variants": report}))
