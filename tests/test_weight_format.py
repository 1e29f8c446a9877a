"""Straight to int4 (`--weight-format int4`, issue 27): the main graph's linears exported as
blocked `DequantizeLinear` + `MatMul`, quantized tensor by tensor as `model.onnx_data` is written
(here with `--streamed`, from a bf16 checkpoint). Checked: the graph's op counts, that no fp32
linear weight is on disk (initializers and bytes), onnxruntime's logits against a PyTorch model on
the same dequantized weights (and far from the unquantized one, so the check can fail), greedy
generation through ORTModelForCausalLM equal to that reference's, and quantizing variants refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import run_optimum_cli
from tiny_models import build_tiny_model

from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.exporters import export
from optimum_onnx23.exporters.passes.weight_format import BLOCK_SIZE, LM_HEAD_BITS, fake_quantized

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")

LAYERS = 6


@pytest.fixture(scope="module")
def int4_export(module_tmp):
    source = module_tmp / "model"
    build_tiny_model("llama", seed=0, num_layers=LAYERS).to(torch.bfloat16).save_pretrained(source)
    out = module_tmp / "int4"
    code = run_optimum_cli("export", "onnx", "--dynamo", "--streamed", "--weight-format", "int4", "--model", source, out)
    assert code == 0
    yield source, out
    shutil.rmtree(out, ignore_errors=True)


def _reference(source):
    """The checkpoint in fp32 (as the export reads it), and the same model on the dequantized weights."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    fake = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    head = fake.get_output_embeddings()
    with torch.no_grad():
        for module in fake.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.weight = torch.nn.Parameter(fake_quantized(module.weight, 4), requires_grad=False)
        head.weight = torch.nn.Parameter(fake_quantized(head.weight, LM_HEAD_BITS), requires_grad=False)  # untied from the Gather
    return plain, fake


def test_linears_are_dequantize_matmul_and_no_fp32_linear_is_on_disk(int4_export):
    source, out = int4_export
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    linears = 7 * LAYERS + 1  # q, k, v, o, gate, up, down per layer, and the lm_head
    assert ops.count("DequantizeLinear") == ops.count("MatMul") == linears
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    assert all(produced_by.get(n.input[1]) == "DequantizeLinear" for n in graph.node if n.op_type == "MatMul")
    init = {t.name: t for t in graph.initializer}
    float_2d = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and t.dims[0] > BLOCK_SIZE]
    config = json.loads((source / "config.json").read_text())
    assert [tuple(t.dims) for t in float_2d] == [(config["vocab_size"], config["hidden_size"])]  # the Gather's table only
    codes = {onnx.TensorProto.UINT4: 0, onnx.TensorProto.INT8: 0}
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            codes[init[node.input[0]].data_type] += 1
    assert codes == {onnx.TensorProto.UINT4: linears - 1, onnx.TensorProto.INT8: 1}
    report = json.loads((out / "export_report.json").read_text())["weight_format"]
    assert report["linears"] == {"int8": 1, "int4": linears - 1}
    plain, _ = _reference(source)
    linear_numel = sum(m.weight.numel() for m in plain.modules() if isinstance(m, torch.nn.Linear))
    other = sum(p.numel() for n, p in plain.named_parameters() if not any(n == f"{k}.weight" for k, m in plain.named_modules() if isinstance(m, torch.nn.Linear)))
    assert report["fp32_bytes"] == 4 * linear_numel
    data = (out / "model.onnx_data").stat().st_size
    # int4 codes, a float32 scale and a uint4 zero point per 32; the embedding and norms fp32: nothing else
    assert report["quantized_bytes"] <= 0.66 * linear_numel + 1.2 * config["vocab_size"] * config["hidden_size"]
    assert data <= report["quantized_bytes"] + 4 * other + 4096
    assert data < 0.5 * 4 * (linear_numel + other)


def test_onnxruntime_computes_the_dequantized_weights(int4_export):
    import onnxruntime as ort

    source, out = int4_export
    plain, fake = _reference(source)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")  # float32 on the dequantized weights
    session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(4, 200, size=(2, 9), dtype=np.int64)
    feeds = {}
    for value in session.get_inputs():
        if value.name == "input_ids":
            feeds[value.name] = ids
        elif value.name == "attention_mask":
            feeds[value.name] = np.ones(ids.shape, dtype=np.int64)
        elif value.name == "position_ids":
            feeds[value.name] = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()
        else:
            shape = [2 if i == 0 else 0 if i == 2 else d for i, d in enumerate(value.shape)]
            feeds[value.name] = np.zeros(shape, dtype=np.float32)
    logits = session.run(["logits"], feeds)[0]
    with torch.no_grad():
        expected = fake(torch.from_numpy(ids)).logits.numpy()
        unquantized = plain(torch.from_numpy(ids)).logits.numpy()
    scale = np.abs(expected).max()
    assert np.abs(logits - expected).max() <= 1e-4 + 1e-4 * scale
    assert np.abs(logits - unquantized).max() > 100 * np.abs(logits - expected).max()  # the quantization is there


def test_greedy_generation_equals_the_fake_quantized_reference(int4_export):
    """At accuracy level 0 (float32 on the dequantized weights). Our sessions' default, level 4,
    quantizes the activations to int8 too: on this model its greedy ids left the reference's at
    the 15th of 16 new tokens, which is that runtime approximation, not the graph."""
    import onnxruntime as ort

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    source, out = int4_export
    _, fake = _reference(source)
    prompt = torch.tensor([[5, 17, 42, 99, 7, 64]])
    with torch.no_grad():
        expected = fake.generate(prompt, max_new_tokens=16, do_sample=False).numpy()
    del fake
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    got = ORTModelForCausalLM.from_pretrained(out, session_options=options).generate(prompt, max_new_tokens=16, do_sample=False)
    assert np.array_equal(np.asarray(got), expected)


def test_quantizing_variants_on_a_quantized_main_graph_are_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="already quantized, so variant ort-cpu-int4 has no float weights") as refused:
        export(tmp_path / "missing", tmp_path / "out", weight_format="int4", variants=["ort-cpu-int4"])
    assert "\n" not in str(refused.value)
