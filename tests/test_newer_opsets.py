"""The standard ops newer than opset 23, each against PyTorch / transformers and against onnx's
reference evaluator (an implementation of the ops' semantics other than onnxruntime's).

- `--opset 28`: SiLU-gated MLPs as `SwiGLU` (fusions/rules/swiglu.py). onnxruntime 1.32 has no
  kernel for it and cannot inline it (its body's `Swish` has none either): the export attaches
  `ort-cpu-functions`, which our sessions select; onnx.reference runs the main graph as is.
- `--opset 27`: the hybrid families' short convolutions as `CausalConvWithState` and their linear
  recurrences as `LinearAttention` (exporters/tracing/recurrences.py, standard_ops.py): Mamba-2's
  SSD scan with `update_rule="gated"`, gated DeltaNet with `"gated_delta"`; onnxruntime 1.32 has
  kernels for both, so no variant. One export per family (LFM2: conv only; Mamba-2: conv + ssm;
  Qwen3.5: conv + gated DeltaNet + attention); Granite 4, Bamba, Falcon-H1 and Nemotron-H run the
  same Mamba-2 functions.
"""

from __future__ import annotations

import hybrid_checks as checks
import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from architecture_records import record
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
    record("llama", "opset28", ops={"SwiGLU": 2}, how="exported with --opset 28, validated, generates as transformers")
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
        ("mistral", 2),
        ("olmo2", 2),
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
    record(model_type, "opset28", ops={"SwiGLU": fused}, how="the SwiGLU rule on the opset-23 export raised to 28")


# model_type -> (CausalConvWithState, LinearAttention) of its tiny config at opset 27
OPSET27 = {"lfm2": (1, 0), "mamba2": (2, 2), "qwen3_5_text": (1, 1)}


@pytest.fixture(scope="module", params=sorted(OPSET27))
def opset27(request, hybrid_exported_dir, hybrid_model_dir):
    return request.param, hybrid_exported_dir(request.param, "--opset", "27"), hybrid_model_dir(request.param)


def test_opset27_one_op_per_state_layer_and_validated(opset27, hybrid_exported_dir):
    model_type, folder, _ = opset27
    checks.check_export(folder, model_type)  # every output, states included, on the 3 shapes
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import} == {"": 27}
    counts = op_counts(folder / "model.onnx")
    assert (counts["CausalConvWithState"], counts["LinearAttention"]) == OPSET27[model_type]
    assert counts["Scan"] == counts["Conv"] == counts["Einsum"] == 0  # no loop, no decomposed convolution left
    nodes = {n.op_type: n for n in model.graph.node}
    if "LinearAttention" in nodes:
        rule = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["LinearAttention"].attribute}["update_rule"]
        assert rule == {"mamba2": b"gated", "qwen3_5_text": b"gated_delta"}[model_type]
    # The conv state is the op's own state: past_conv.{i} in, present_conv.{i} out, same I/O names as opset 23.
    conv = nodes["CausalConvWithState"]
    assert conv.input[3].startswith("past_conv.") and conv.output[1].startswith("present_conv.")
    default = onnx.load(str(hybrid_exported_dir(model_type) / "model.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == [i.name for i in default.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in default.graph.output]
    rules = sorted({onnx.helper.get_attribute_value(a).decode() for n in model.graph.node for a in n.attribute if a.name == "update_rule"})
    record(
        model_type, "opset27", how="exported with --opset 27, validated, generates as transformers",
        ops={"CausalConvWithState": counts["CausalConvWithState"], "LinearAttention": counts["LinearAttention"]}, update_rules=rules,
    )


def test_opset27_generates_as_transformers(opset27):
    model_type, folder, source = opset27
    checks.check_generation(folder, source)  # greedy and beam-4, batch 1 and a left-padded batch of 3


def test_opset27_reference_evaluator_matches_onnxruntime(opset27):
    """onnx.reference (the ops' ONNX function bodies) against onnxruntime's kernels on a prefill
    with a nonzero state and a decode step, every output."""
    import onnxruntime as ort

    model_type, folder, _ = opset27
    model = onnx.load(str(folder / "model.onnx"))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for seq, past in ((5, 3), (1, 8)):
        feeds = {}
        for value in session.get_inputs():
            dims = [2 if d == "batch_size" else d for d in value.shape]
            dims = [seq if d == "sequence_length" else past if isinstance(d, str) and "past" in d else d for d in dims]
            if value.name == "input_ids":
                feeds[value.name] = rng.integers(0, 100, (2, seq)).astype(np.int64)
            elif value.name == "attention_mask":
                feeds[value.name] = np.ones((2, past + seq), np.int64)
            elif value.name == "position_ids":
                feeds[value.name] = np.tile(np.arange(past, past + seq), (2, 1)).astype(np.int64)
            else:
                feeds[value.name] = (rng.standard_normal([d if isinstance(d, int) else past for d in dims]) * 0.5).astype(np.float32)
        names = [o.name for o in session.get_outputs()]
        expected = dict(zip(names, session.run(names, feeds)))
        got = dict(zip(names, ReferenceEvaluator(model).run(names, feeds)))
        for name in names:
            scale = max(1.0, float(np.abs(expected[name]).max()))
            np.testing.assert_allclose(got[name], expected[name], atol=1e-4 * scale, rtol=0, err_msg=f"{model_type} {name} seq={seq}")
