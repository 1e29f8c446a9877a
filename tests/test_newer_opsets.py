"""The standard ops newer than opset 23, each against PyTorch / transformers and against onnx's
reference evaluator (an implementation of the ops' semantics other than onnxruntime's).

- `--opset 28`: SiLU-gated MLPs as `SwiGLU` (fusions/rules/swiglu.py). onnxruntime 1.32 has no
  kernel for it and cannot inline it (its body's `Swish` has none either): the export attaches
  `ort-cpu-functions`, which our sessions select; onnx.reference runs the main graph as is.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from test_export import op_counts
from test_export_flags import assert_matches_pytorch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23.fusions.rules import fuse_swiglu
from optimum_onnx23.pipelines import ORTModelForCausalLM
from optimum_onnx23.variants import list_variants
from optimum_onnx23.variants.producers import ort_cpu_functions
from optimum_onnx23.variants.runtime import select_for_providers


def _reference_run(folder, feeds):
    model = onnx.load(str(folder / "model.onnx"))
    names = [o.name for o in model.graph.output]
    return {n: np.asarray(v).astype(np.float32) for n, v in zip(names, ReferenceEvaluator(model).run(names, feeds))}


def _selected_run(folder, feeds):
    """What our sessions run: the variant onnxruntime's CPU provider selects."""
    selected, _ = select_for_providers(folder / "model.onnx", ["CPUExecutionProvider"])
    session = selected.session(["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: v.astype(np.float32) for n, v in zip(names, session.run(names, feeds))}


@pytest.fixture(scope="module")
def llama_opset28(exported_dir):
    return exported_dir("llama", "--opset", "28")


def test_opset28_writes_swiglu_per_mlp_and_its_body_for_onnxruntime(llama_opset28, tiny_model_dir):
    folder = llama_opset28
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == 28
    counts = op_counts(folder / "model.onnx")
    assert counts["SwiGLU"] == 2 and counts["Sigmoid"] == 0  # one per layer, no SiLU left
    node = next(n for n in model.graph.node if n.op_type == "SwiGLU")
    assert onnx.helper.get_attribute_value(node.attribute[0]) == 1.0  # SiLU is Swish with alpha 1
    # The gated input (A, the first) is gate_proj's output, the value (B) up_proj's.
    producers = {o: n for n in model.graph.node for o in n.output}
    weights = {t.name: t for t in onnx.load(str(folder / "model.onnx")).graph.initializer}
    mlp = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).model.layers[0].mlp
    for name, projection in zip(node.input, (mlp.gate_proj, mlp.up_proj)):
        weight = onnx.numpy_helper.to_array(weights[producers[name].input[1]])
        np.testing.assert_array_equal(weight, projection.weight.detach().numpy().T)
    missing = ort_cpu_functions.ops_without_kernel(ir.load(folder / "model.onnx").graph, 28)
    variants = {v.name: v for v in list_variants(model)}
    if missing:  # onnxruntime 1.32: SwiGLU (and Swish)
        assert missing == ["SwiGLU"] and set(variants) == {ort_cpu_functions.NAME}
        assert sorted(variants[ort_cpu_functions.NAME].ops) == ["ai.onnx::Mul", "ai.onnx::Sigmoid"]
        import onnxruntime as ort

        with pytest.raises(Exception, match="Swish"):
            ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    else:
        assert not variants


def test_opset28_matches_pytorch_in_onnxruntime_and_the_reference_evaluator(llama_opset28, tiny_model_dir):
    assert_matches_pytorch(_selected_run, llama_opset28, tiny_model_dir("llama"))
    assert_matches_pytorch(_reference_run, llama_opset28, tiny_model_dir("llama"))


def test_opset28_generates_as_transformers(llama_opset28, tiny_model_dir):
    source = tiny_model_dir("llama")
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    batch = tokenizer(["ONNX is", "The tiny model reads a much longer prompt"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=8, do_sample=False)
    expected = AutoModelForCausalLM.from_pretrained(source).eval().generate(**batch, **kwargs)
    got = ORTModelForCausalLM.from_pretrained(llama_opset28).generate(**batch, **kwargs)
    assert torch.equal(got, expected), f"{got.tolist()} != {expected.tolist()}"


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("phi3", 2),  # one packed gate_up projection, split in halves
        ("qwen3", 2),
        ("gemma", 0),  # GELU-gated (gelu_pytorch_tanh): not SwiGLU
        ("gpt2", 0),  # no gated MLP
    ],
)
def test_swiglu_rule_on_the_families(model_type, expected, exported_dir):
    """The rule on the families' opset-23 graphs raised to 28 (no second export): one SwiGLU per
    SiLU-gated MLP, none elsewhere, no SiLU left behind where it fused."""
    model = ir.load(exported_dir(model_type) / "model.onnx")
    sigmoids = sum(n.op_type == "Sigmoid" for n in model.graph)
    model.opset_imports[""] = 28
    fused = fuse_swiglu(model)
    assert fused == expected
    assert sum(n.op_type == "SwiGLU" for n in model.graph) == expected
    assert sum(n.op_type == "Sigmoid" for n in model.graph) == sigmoids - expected
