"""Every built-in variant on architectures whose graphs differ where the producers look: GPT-2
(Gemm linears, LayerNorm, no GQA), Gemma-2 (softcapped attention), Phi-3 (fused QKV), Qwen-3 (QK
norms), SmolLM-3 (layers without RoPE), BLOOM (ALiBi bias in the attention mask, fused QKV with
bias), MiniCPM3 (MLA: latent cache, low-rank projections). Uses the shared default exports."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from architecture_records import record

from optimum_onnx23.variants import attach_builtin_variants, select_variant
from optimum_onnx23.variants.folder import load_model
from optimum_onnx23.variants.producers._linear import find_linears, group_linears



pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")
ALL = ["ort-cpu-int4", "ort-cpu-int8", "ort-cpu", "backend-context"]
QUANTIZED_OP = {"ort-cpu-int4": "MatMulNBits", "ort-cpu-int8": "DynamicQuantizeMatMul"}
# The tiny test models scale their weights by 4 (so greedy choices are not ties), which makes
# quantization error larger than on real checkpoints: these bounds only catch broken rewrites.
MAX_RELATIVE = {"ort-cpu-int4": 0.4, "ort-cpu-int8": 0.1, "ort-cpu": 1e-5, "backend-context": 0.0}


def _run(path, ids):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    feeds = {k: v for k, v in feeds.items() if k in names}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return session.run(None, feeds)


@pytest.mark.parametrize("model_type", ["gpt2", "gemma2", "phi3", "qwen3", "smollm3", "bloom", "minicpm3"])
def test_builtin_variants_on_architecture(exported_dir, tmp_path, model_type):
    base = exported_dir(model_type)
    folder = tmp_path / model_type
    shutil.copytree(base, folder)
    report = attach_builtin_variants(folder, ALL)
    if model_type in ("gpt2", "bloom"):  # LayerNorm and plain multi-head attention: nothing for ort-cpu to rewrite
        assert list(report["skipped"]) == ["ort-cpu"] and "nothing to rewrite" in report["skipped"]["ort-cpu"]
    else:
        assert not report["skipped"]
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    ids = np.array([[1, 17, 43, 99, 250, 7, 8, 12]], np.int64)
    main = _run(base / "model.onnx", ids)
    assert all(np.array_equal(a, b) for a, b in zip(main, _run(folder / "model.onnx", ids)))
    linears = find_linears(load_model(base / "model.onnx").graph)
    for name in report["variants"]:
        selected = select_variant(load_model(folder / "model.onnx"), variant=name)
        if name in QUANTIZED_OP:
            expected = len(group_linears(linears, pack=name == "ort-cpu-int8"))
            assert [n.op_type for n in selected.graph].count(QUANTIZED_OP[name]) == expected
        path = folder / f"selected-{name}.onnx"
        ir.save(selected, path)
        got = _run(path, ids)
        relative = np.abs(got[0] - main[0]).max() / np.abs(main[0]).max()
        assert relative <= MAX_RELATIVE[name], f"{model_type} {name}: relative logits error {relative:.3g}"
        for want, have in zip(main[1:], got[1:]):  # KV cache outputs keep their shapes and names
            assert want.shape == have.shape
    record(model_type, "variants", applied=sorted(report["variants"]))
