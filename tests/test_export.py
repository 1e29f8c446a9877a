"""Export of every supported architecture through `optimum-cli export onnx --dynamo`.

Each test checks the written folder against an independent PyTorch run on shapes the exporter
never saw (neither at trace time nor in its own validation).
"""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import torch
from architecture_records import record_export
from tiny_models import MOE_EXPERTS
from transformers import AutoModelForCausalLM

from optimum_onnx23.fusions import STANDARD_OPS

# Standard-op counts for the 2-layer tiny models of tests/tiny_models.py, worked out per
# architecture by hand (not read from the exporter's registry): one Attention per layer; norms per
# layer + final (llama-like: 2; gemma2/3, glm4: 4 with the post-norms; q/k norms 2 more; parallel
# attention/MLP blocks (phi, gptj, codegen, cohere, falcon-7b): 1; bloom's embedding norm 1 more;
# minicpm3's MLA: q_a and kv_a norms 2 more; gemma4: 4 block norms, q/k/v norms and a per-layer-input
# norm a layer, plus the per-layer-input projection's norm); RotaryEmbedding on q and k of every layer that uses
# rope (smollm3's, cohere2's and exaone4's tiny configs: layer 0 only; none with learned or ALiBi
# positions).
_RMS = "RMSNormalization"
_LN = "LayerNormalization"
EXPECTED_OPS = {
    "apertus": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "arcee": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "bloom": {"Attention": 2, _LN: 6, "RotaryEmbedding": 0},
    "codegen": {"Attention": 2, _LN: 3, "RotaryEmbedding": 4},
    "cohere": {"Attention": 2, _LN: 7, "RotaryEmbedding": 4},
    "cohere2": {"Attention": 2, _LN: 3, "RotaryEmbedding": 2},
    "ernie4_5": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "exaone4": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 2},
    "falcon": {"Attention": 2, _LN: 3, "RotaryEmbedding": 4},
    "gemma": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "gemma2": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "gemma3": {"Attention": 2, _RMS: 13, "RotaryEmbedding": 4},
    "gemma3_text": {"Attention": 2, _RMS: 13, "RotaryEmbedding": 4},
    "gemma4_text": {"Attention": 2, _RMS: 18, "RotaryEmbedding": 4},
    "glm": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "glm4": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "gpt2": {"Attention": 2, _LN: 5, "RotaryEmbedding": 0},
    "gpt_bigcode": {"Attention": 2, _LN: 5, "RotaryEmbedding": 0},
    "gpt_neox": {"Attention": 2, _LN: 5, "RotaryEmbedding": 4},
    "gptj": {"Attention": 2, _LN: 3, "RotaryEmbedding": 4},
    "granite": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "helium": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "hunyuan_v1_dense": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "llama": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "minicpm3": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "ministral": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "mistral": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "nemotron": {"Attention": 2, _LN: 5, "RotaryEmbedding": 4},
    "olmo": {"Attention": 2, _LN: 5, "RotaryEmbedding": 4},
    "olmo2": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "olmo3": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "opt": {"Attention": 2, _LN: 5, "RotaryEmbedding": 0},
    "phi": {"Attention": 2, _LN: 3, "RotaryEmbedding": 4},
    "phi3": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "qwen2": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "qwen3": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "seed_oss": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "smollm3": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 2},
    "stablelm": {"Attention": 2, _LN: 5, "RotaryEmbedding": 4},
    "starcoder2": {"Attention": 2, _LN: 5, "RotaryEmbedding": 4},
    # by building block: llama-style (5), q/k norms (apertus1p5_text: 9), sub-norms before o_proj and
    # down_proj (bitnet: 9), post-norms (hyperclovax: 9), LayerNorm (jais2)
    "apertus1p5_text": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "bitnet": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "cwm": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "exaone": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "hyperclovax": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "internlm3": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "iquestcoder": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "jais2": {"Attention": 2, _LN: 5, "RotaryEmbedding": 4},
    "ministral3": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "vaultgemma": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    # issue 24, by building block: learned positions (no rotary) with 2 LayerNorms a layer + final; persimmon's
    # full-width q/k LayerNorms 2 more a layer; modernbert-decoder's embedding norm 1 more; youtu: minicpm3's MLA
    # (q_a and kv_a norms); gemma4_unified_text: gemma4's block, q/k/v norms (no per-layer inputs: 15)
    "biogpt": {"Attention": 2, _LN: 5, "RotaryEmbedding": 0},
    "ctrl": {"Attention": 2, _LN: 5, "RotaryEmbedding": 0},
    "gpt-sw3": {"Attention": 2, _LN: 5, "RotaryEmbedding": 0},
    "persimmon": {"Attention": 2, _LN: 9, "RotaryEmbedding": 4},
    "modernbert-decoder": {"Attention": 2, _LN: 6, "RotaryEmbedding": 4},
    "youtu": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
    "gemma4_unified_text": {"Attention": 2, _RMS: 15, "RotaryEmbedding": 4},
    "gemma4": {"Attention": 2, _RMS: 18, "RotaryEmbedding": 4},
    "gemma4_unified": {"Attention": 2, _RMS: 15, "RotaryEmbedding": 4},
    # text decoders of multimodal checkpoints: persimmon's (fuyu), qwen2's (got_ocr2), qwen3's (moss_transcribe_diarize)
    "fuyu": {"Attention": 2, _LN: 9, "RotaryEmbedding": 4},
    "got_ocr2": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4},
    "moss_transcribe_diarize": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4},
}
# (rotary_embedding_dim, interleaved) of every RotaryEmbedding node where not (0, 0): partial
# rotary rotates the first r channels of each 16-wide head (phi, glm, nemotron: half; gpt_neox,
# stablelm: a quarter; gptj/codegen: rotary_dim 8); pairs instead of halves for the GPT-J lineage,
# GLM, Cohere, Helium and ERNIE.
ROTARY_ATTRIBUTES = {
    "codegen": (8, 1), "cohere": (0, 1), "cohere2": (0, 1), "ernie4_5": (0, 1), "ernie4_5_moe": (0, 1), "glm": (8, 1), "glm4": (8, 1),
    "glm4_moe": (8, 0),
    # per-layer-type rope: the sliding layer rotates every channel, the full layer the first half
    "laguna": {(0, 0), (8, 0)},
    "gpt_neox": (4, 0), "gptj": (8, 1), "helium": (0, 1), "nemotron": (8, 0), "phi": (8, 0), "stablelm": (4, 0),
    "persimmon": (8, 0), "fuyu": (8, 0), "cohere2_moe": (0, 1),
}
# Mixture-of-Experts families (TINY_MOE_CONFIGS): as above (gpt-oss: no Attention, its sinks have no
# standard op; ernie4_5_moe: interleaved rotary, glm4_moe: partial; deepseek_v3: MLA's q_a and kv_a
# norms 2 more a layer), plus one `If` per expert of each MoE layer (MOE_EXPERTS; deepseek_v3,
# ernie4_5_moe, glm4_moe: layer 0 is dense) and the routers' own Softmax: 1 a layer for softmax
# routers, 2 for phimoe's sparsemixer, none for sigmoid routers (deepseek_v3, glm4_moe), gpt-oss 1
# over its top-k logits plus 1 of its unfused attention.
EXPECTED_MOE_OPS = {
    "mixtral": {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "qwen2_moe": {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "qwen3_moe": {"Attention": 2, "RMSNormalization": 9, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "olmoe": {"Attention": 2, "RMSNormalization": 9, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "granitemoe": {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "phimoe": {"Attention": 2, "LayerNormalization": 5, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 4},
    "gpt_oss": {"Attention": 0, "RMSNormalization": 5, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 4},
    "deepseek_v3": {"Attention": 2, "RMSNormalization": 9, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "ernie4_5_moe": {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 1},
    "glm4_moe": {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    # By building block: 5 RMSNorms (2 a layer + final), 9 with per-head q/k norms; one If per expert of each
    # MoE layer (layer 0 dense: minicpm5_moe, hy_v3, laguna by mlp_layer_types, dots1, param2moe, sarvam_moe
    # by first_k_dense_replace); a Softmax per MoE layer for softmax routers, none for sigmoid ones.
    "aria_text": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "granitemoeshared": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "minicpm5_moe": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "solar_open": {"Attention": 2, _RMS: 5, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 0},
    "dots1": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "flex_olmo": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "hunyuan_v1_moe": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "hy_v3": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "mellum": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "minimax_m2": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 0},
    "minimax_m3_vl_text": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 2 * MOE_EXPERTS, "Softmax": 0},
    "param2moe": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "sarvam_moe": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "laguna": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    # issue 24: sandwich (4) + q/k norms a layer, rotary on the sliding layer only (afmoe, kolibri1: 13; sigmoid routers); exaone4's and cohere2's attention with
    # experts (cohere2_moe: both layers sparse); MLA + grouped routing (glm4_moe_lite, sarvam_mla: layer 0 dense)
    "afmoe": {"Attention": 2, _RMS: 13, "RotaryEmbedding": 2, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "kolibri1": {"Attention": 2, _RMS: 13, "RotaryEmbedding": 2, "If": 2 * MOE_EXPERTS, "Softmax": 0},
    "exaone_moe": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 2, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "cohere2_moe": {"Attention": 2, _LN: 3, "RotaryEmbedding": 2, "If": 2 * MOE_EXPERTS, "Softmax": 2},
    "glm4_moe_lite": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
    "sarvam_mla": {"Attention": 2, _RMS: 9, "RotaryEmbedding": 4, "If": 1 * MOE_EXPERTS, "Softmax": 0},
}
EXPECTED_OPS.update(EXPECTED_MOE_OPS)
# Ops that must be gone once attention is fused (decomposed softmax attention, softcap included);
# MoE routers keep their own (counted above).
UNFUSED_ATTENTION_OPS = ("Softmax",)


def op_counts(path) -> collections.Counter:
    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(node.op_type for node in model.graph.node)


def run_both(folder, model_dir, batch, seq, past, pad, seed):
    """Feed the same random inputs to onnxruntime and to transformers (with a DynamicCache)."""
    from transformers import DynamicCache

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    config = model.config.get_text_config()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    # (heads, head size) of each past from the graph: keys and values may differ (MLA's latent).
    dims = [(i.shape[1], i.shape[3]) for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    layers = len(dims) // 2
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    mask[-1, :pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    pasts = [torch.randn(batch, heads, past, size, generator=g) for heads, size in dims]
    cache = DynamicCache()
    for i in range(layers):
        cache.update(pasts[2 * i].clone(), pasts[2 * i + 1].clone(), i)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    expected = {"logits": out.logits.numpy()}
    for i, layer in enumerate(out.past_key_values.layers[:layers]):
        expected[f"present.{i}.key"] = layer.keys.numpy()
        expected[f"present.{i}.value"] = layer.values.numpy()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    for i in range(layers):
        feeds[f"past_key_values.{i}.key"] = pasts[2 * i].numpy()
        feeds[f"past_key_values.{i}.value"] = pasts[2 * i + 1].numpy()
    names = [o.name for o in session.get_outputs()]
    actual = dict(zip(names, session.run(names, feeds)))
    valid_queries = mask[:, past:].bool().numpy()
    return expected, actual, valid_queries


def test_architecture_exports_fused_and_matches_pytorch(model_type, exported_dir, tiny_model_dir):
    folder = exported_dir(model_type)

    for name in ("model.onnx", "model.onnx_data", "config.json", "generation_config.json", "tokenizer.json", "export_report.json"):
        assert (folder / name).is_file(), f"{name} missing from the export"
    # The weights live in the external data file, not in the graph proto.
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    inline = [t.name for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL and np.prod(t.dims) > 1024]
    assert not inline, f"{model_type}: weights stored in the graph proto: {inline[:3]}"
    assert (folder / "model.onnx_data").stat().st_size > 100_000
    assert {o.domain: o.version for o in model.opset_import}[""] == 23
    counts = op_counts(folder / "model.onnx")
    for op, expected in EXPECTED_OPS[model_type].items():
        assert counts[op] == expected, f"{model_type}: {counts[op]} {op} nodes, expected {expected}"
    for op in UNFUSED_ATTENTION_OPS:
        expected = EXPECTED_OPS[model_type].get(op, 0)
        assert counts[op] == expected, f"{model_type}: {counts[op]} {op} nodes where {expected} are expected: attention not fully fused"
    rotary = {
        (a.get("rotary_embedding_dim", 0), a.get("interleaved", 0))
        for a in ({x.name: x.i for x in n.attribute} for n in model.graph.node if n.op_type == "RotaryEmbedding")
    }
    allowed = ROTARY_ATTRIBUTES.get(model_type, (0, 0))
    allowed = allowed if isinstance(allowed, set) else {allowed}
    assert rotary == allowed if len(allowed) > 1 else rotary <= allowed, f"{model_type}: RotaryEmbedding attributes {rotary}"

    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    layers = 2
    assert inputs == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")
    ]
    assert outputs == ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]

    report = json.loads((folder / "export_report.json").read_text())
    assert report["fusions"]["op_counts"]["Attention"] == EXPECTED_OPS[model_type]["Attention"]
    # The report says what the architecture should have, and why where a standard op is absent.
    standard = {op: n for op, n in EXPECTED_OPS[model_type].items() if op in STANDARD_OPS}
    assert {op: report["expected_fusions"].get(op, 0) for op in standard} == standard
    assert all(report["unfused"].get(op) for op, count in standard.items() if count == 0)
    assert report["max_abs_diff"] <= 1e-4 and report["warnings"] == []
    assert report["files"]["model.onnx_data"] == (folder / "model.onnx_data").stat().st_size

    # Shapes unseen by the exporter: a long prefill from an empty cache, and a padded 2-token
    # step on a long past (beyond the tiny sliding windows of 6).
    for batch, seq, past, pad, seed in ((1, 13, 0, 0, 1), (2, 2, 11, 4, 2)):
        expected, actual, valid = run_both(folder, tiny_model_dir(model_type), batch, seq, past, pad, seed)
        for name, ref in expected.items():
            got = actual[name]
            assert got.shape == ref.shape, name
            if name == "logits":
                ref, got = ref[valid], got[valid]
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=f"{model_type} {name} b={batch} s={seq} p={past}")
    record_export(model_type, folder)


def test_every_family_left_out_by_default_has_its_blocks_tested():
    """The families the default suite leaves to OPTIMUM_ONNX23_ALL_FAMILIES=1 each name a family of the
    default suite with the same building blocks, and keep their own expected op counts."""
    from tiny_models import SAME_BLOCKS_AS, TINY_CONFIGS, TINY_HYBRID_CONFIGS

    default = {f for f in [*TINY_CONFIGS, *TINY_HYBRID_CONFIGS] if f not in SAME_BLOCKS_AS}
    assert set(SAME_BLOCKS_AS) <= {*TINY_CONFIGS, *TINY_HYBRID_CONFIGS}
    assert set(SAME_BLOCKS_AS.values()) <= default, set(SAME_BLOCKS_AS.values()) - default
    assert {f for f in SAME_BLOCKS_AS if f in TINY_CONFIGS} <= set(EXPECTED_OPS)


def test_text_generation_task_without_past(exported_dir):
    folder = exported_dir("llama", "--task", "text-generation")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert op_counts(folder / "model.onnx")["Attention"] == 2
    assert json.loads((folder / "export_report.json").read_text())["task"] == "text-generation"


def test_opset_18_exports_without_fused_ops(exported_dir, tiny_model_dir):
    folder = exported_dir("llama", "--opset", "18")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    counts = op_counts(folder / "model.onnx")
    assert counts["Attention"] == counts["RMSNormalization"] == counts["RotaryEmbedding"] == 0
    report = json.loads((folder / "export_report.json").read_text())
    assert "opset 18" in report["fusions"]["skipped"]
    expected, actual, valid = run_both(folder, tiny_model_dir("llama"), 2, 3, 5, 2, 3)
    np.testing.assert_allclose(actual["logits"][valid], expected["logits"][valid], atol=1e-4, rtol=0)


def test_opset_24_keeps_fusions(exported_dir, tiny_model_dir):
    folder = exported_dir("gemma2", "--opset", "24")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == 24
    counts = op_counts(folder / "model.onnx")
    assert counts["Attention"] == 2 and counts["RMSNormalization"] == 9 and counts["RotaryEmbedding"] == 4
    expected, actual, valid = run_both(folder, tiny_model_dir("gemma2"), 1, 4, 8, 0, 4)
    np.testing.assert_allclose(actual["logits"][valid], expected["logits"][valid], atol=1e-4, rtol=0)


def test_bundled_checkpoint_export_keeps_tokenizer_and_generation_config(exported_dir):
    from tiny_models import BUNDLED
    from transformers import AutoTokenizer, GenerationConfig

    folder = exported_dir("bundled")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("ONNX is").input_ids == AutoTokenizer.from_pretrained(BUNDLED)("ONNX is").input_ids
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(BUNDLED).chat_template
    assert GenerationConfig.from_pretrained(folder).max_new_tokens == GenerationConfig.from_pretrained(BUNDLED).max_new_tokens
    assert oct(folder.stat().st_mode & 0o777) != oct(0o700), "staging folder permissions leaked into the output"


def test_fusion_report_attributes_gemma2_softcap_attention_to_our_rule(exported_dir):
    report = json.loads((exported_dir("gemma2") / "export_report.json").read_text())
    applied = report["fusions"]["applied"]
    # onnxscript's rules cannot fuse softcapped attention; ours turns each layer's into Attention,
    # and grouped_kv_attention then drops the repeat_kv copies in front of it.
    assert applied["optimum_onnx23"]["SoftcapAttention"] == 2
    assert applied["onnxscript"]["GQA"] + applied["optimum_onnx23"]["GroupedKvAttention"] == 2
    model = onnx.load(str(exported_dir("gemma2") / "model.onnx"), load_external_data=False)
    softcaps = [a.f for n in model.graph.node if n.op_type == "Attention" for a in n.attribute if a.name == "softcap"]
    assert softcaps == [50.0, 50.0]
    assert op_counts(exported_dir("gemma2") / "model.onnx")["Tanh"] == 1  # only the final logit softcap remains


def test_attention_reads_grouped_kv_heads_without_repeat_copies(exported_dir):
    """No Expand of the KV cache to all query heads before Attention (the repeat_kv copies)."""
    import onnx_ir as ir

    for model_type in ("llama", "gemma2", "qwen3"):
        model = ir.load(exported_dir(model_type) / "model.onnx")
        for node in model.graph:
            if node.op_type != "Attention":
                continue
            for kv in node.inputs[1:3]:
                producers = []
                value = kv
                for _ in range(3):  # Reshape <- Expand <- Unsqueeze, if repeat_kv survived
                    producer = value.producer() if value is not None else None
                    if producer is None:
                        break
                    producers.append(producer.op_type)
                    value = producer.inputs[0]
                assert "Expand" not in producers, f"{model_type}: {kv.name} is a repeat_kv copy ({producers})"
        report = json.loads((exported_dir(model_type) / "export_report.json").read_text())
        applied = report["fusions"]["applied"]
        assert applied["onnxscript"]["GQA"] + applied["optimum_onnx23"]["GroupedKvAttention"] == 2


def test_variants_and_dry_run_publish_from_the_export_command(exported_dir, tmp_path):
    import shutil

    from conftest import export_stdout

    from optimum_onnx23.publish import plan_hub_layout
    from optimum_onnx23.publish.push import _size
    from optimum_onnx23.variants import attach_builtin_variants, list_variants
    from optimum_onnx23.variants.folder import load_model

    repo_id = "tiny-org/tiny-llama-onnx"
    folder = exported_dir("bundled", "--variant", "ort-cpu-int8", "--push-to-hub", repo_id, "--dry-run")
    # What the command printed, kept by the fixture whichever test made the export.
    out = export_stdout(folder)
    layout = plan_hub_layout(folder, repo_id)
    assert out.startswith(f"Dry run: nothing was uploaded. A push would commit {len(layout.files)} files")
    listed = dict(re.findall(r"^  (\S+) +(\d[\d,.]* [kM]B)$", out, re.M))
    assert listed == {f.path_in_repo: _size(f.size) for f in layout.files}
    assert "onnx/model.onnx" in listed and "genai_config.json" in listed
    assert "\n- ort-cpu-int8\n" in out and str(layout.card).rstrip() in out

    assert [v.name for v in list_variants(load_model(folder / "model.onnx"))] == ["ort-cpu-int8"]
    report = json.loads((folder / "export_report.json").read_text())
    assert report["files"]["model.onnx_data"] == (folder / "model.onnx_data").stat().st_size
    assert report["cache"] == "dynamic" and report["logits"] == "all"
    # The export's attach report is what attaching to the plain export gives.
    plain = tmp_path / "plain"
    shutil.copytree(exported_dir("bundled"), plain)
    expected = attach_builtin_variants(plain, ["ort-cpu-int8"])
    added, want = report["variants"]["variants"]["ort-cpu-int8"], expected["variants"]["ort-cpu-int8"]
    for key in ("owned_bytes", "data_bytes_added", "graph_bytes_added", "nodes", "ops"):
        assert added[key] == want[key], key
    assert report["variants"]["skipped"] == {} and report["variants"]["files_after"] == expected["files_after"]
    # int8's activation smoothing: one Mul by the variant's own 1/s before each matmul
    assert added["ops"] == ["ai.onnx::Mul", "com.microsoft::MatMulNBits", "com.microsoft::SkipSimplifiedLayerNormalization"]
    # ... and what the written file holds.
    (info,) = list_variants(load_model(folder / "model.onnx"))
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    (function,) = [f for f in proto.functions if f.domain == "pkg.optimum_onnx23.variant"]
    assert added["nodes"] == len(function.node) and added["owned_bytes"] == info.owned_bytes and added["ops"] == info.ops


def test_bf16_export_says_it_was_not_validated(exported_dir):
    """onnxruntime's CPU provider has no bf16 MatMul: the export says so rather than pretending."""
    folder = exported_dir("bundled", "--dtype", "bf16")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert model.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    report = json.loads((folder / "export_report.json").read_text())
    assert report["validation"] == {}
    assert [w for w in report["warnings"] if w.startswith("Not validated against PyTorch")]
