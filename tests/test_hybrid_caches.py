"""Hybrid decoders whose cache is more than K and V (exporters.families.cache_layout, exporters.families.hybrid):
LFM2 (conv states) and Qwen3.5 / Qwen3.5-MoE / Qwen3-Next (gated DeltaNet: conv + recurrent states;
the last two with routed experts, lowered through transformers' experts interface), exported from
tiny seeded configs with default flags, against transformers on the same weights. The
Mamba-2 families are in test_hybrid_mamba.py (a second file, so xdist exports them in parallel).
Also here: the static cache, in-place state binding, errors."""

from __future__ import annotations

import hybrid_checks as checks
import numpy as np
import pytest
import torch
from architecture_records import record, record_export
from tiny_models import families_in_run, save_tiny_hybrid_model

from optimum_onnx23.errors import UnsupportedArchitectureError
from optimum_onnx23.pipelines import ORTModelForCausalLM

# Building blocks: conv (lfm2), gated DeltaNet + attention (qwen3_5_text), the same with routed
# experts in every layer from a multimodal checkpoint (qwen3_5_moe) and from its text decoder's own
# (qwen3_5_moe_text), DeltaNet + rotary attention + experts (qwen3_next). The last two are the
# blocks of qwen3_5_moe: tested with OPTIMUM_ONNX23_ALL_FAMILIES=1 (tiny_models.SAME_BLOCKS_AS).
FAMILIES = families_in_run(["lfm2", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next"])
# The model_type of the exported decoder (a multimodal checkpoint exports its text decoder).
EXPORTED_AS = {"qwen3_5_moe": "qwen3_5_moe_text"}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_export_validates_every_state(model_type, hybrid_exported_dir):
    import json

    folder = hybrid_exported_dir(model_type)
    checks.check_export(folder, model_type)
    assert json.loads((folder / "config.json").read_text())["model_type"] == EXPORTED_AS.get(model_type, model_type)
    record_export(model_type, folder)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_states_match_transformers_cache(model_type, hybrid_exported_dir, hybrid_model_dir):
    checks.check_states_match_transformers(hybrid_exported_dir(model_type), hybrid_model_dir(model_type))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_generate_matches_transformers(model_type, hybrid_exported_dir, hybrid_model_dir):
    checks.check_generation(hybrid_exported_dir(model_type), hybrid_model_dir(model_type))
    record(model_type, "generate")


@pytest.mark.parametrize("model_type", FAMILIES)
def test_heavy_left_padding_does_not_leak_into_states(model_type, hybrid_exported_dir, hybrid_model_dir):
    checks.check_left_padding(hybrid_exported_dir(model_type), hybrid_model_dir(model_type))


@pytest.mark.parametrize("model_type", ["lfm2", "qwen3_5_text"])
def test_sampling_reproduces_under_seed(model_type, hybrid_exported_dir, hybrid_model_dir):
    checks.check_sampling(hybrid_exported_dir(model_type), hybrid_model_dir(model_type))


@pytest.mark.parametrize("model_type", families_in_run(["qwen3_5_moe", "qwen3_next", "granitemoehybrid"]))
def test_routed_experts_lowered_per_expert(model_type, hybrid_exported_dir):
    """Hybrid x MoE: the experts of every layer (transformers' experts modules, found by their
    interface, not by family) are one `If` per expert reading that expert's weights in place, as in
    the dense MoE decoders; no grouped_mm fallback or data-dependent op is left (DeltaNet's Scan is
    the recurrence's own)."""
    import onnx

    model = onnx.load(hybrid_exported_dir(model_type) / "model.onnx", load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    assert not {"NonZero", "Unique", "Compress", "Loop"} & set(ops), ops
    initializers = {t.name for t in model.graph.initializer}
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    assert len(ifs) == 2 * 4, f"{model_type}: {len(ifs)} If nodes for 2 MoE layers of 4 experts"
    for node in ifs:
        then = next(a.g for a in node.attribute if a.name == "then_branch")
        weights = [n.input[1] for n in then.node if n.op_type == "MatMul"]
        assert len(weights) == 2 and all(w in initializers for w in weights), weights


def test_layout_names_follow_transformers_js(hybrid_exported_dir):
    """LFM2's conv layer 0 and attention layer 1; Qwen3.5's DeltaNet layer 0 holds conv + recurrent."""
    lfm2 = ORTModelForCausalLM.from_pretrained(hybrid_exported_dir("lfm2"))
    assert lfm2.io.past_names() == ["past_conv.0", "past_key_values.1.key", "past_key_values.1.value"]
    assert lfm2.io.present_names() == ["present_conv.0", "present.1.key", "present.1.value"]
    assert lfm2.io.cache[0].shape == (64, 2)  # hidden, conv_L_cache - 1
    qwen = ORTModelForCausalLM.from_pretrained(hybrid_exported_dir("qwen3_5_text"))
    assert qwen.io.past_names()[:2] == ["past_conv.0", "past_recurrent.0"]
    assert qwen.io.cache[0].shape == (2 * 2 * 16 + 4 * 16, 3) and qwen.io.cache[1].shape == (4, 16, 16)


def test_states_bound_in_place_when_the_graph_allows(hybrid_exported_dir):
    """LFM2's conv state is read (Concat) before its present is written (Slice): one buffer serves
    both, step after step. Qwen3.5's recurrent state goes through a Scan, whose last iteration may
    write the output before the body has read the input: never aliased."""
    lfm2 = ORTModelForCausalLM.from_pretrained(hybrid_exported_dir("lfm2"))
    assert lfm2.io.inplace_states == {"past_conv.0"}
    addresses = checks.state_buffers(lfm2, np.array([[4, 5, 6], [7, 8, 9]], np.int64))
    assert addresses[0] == addresses[1] == addresses[2]
    qwen = ORTModelForCausalLM.from_pretrained(hybrid_exported_dir("qwen3_5_text"))
    assert "past_recurrent.0" not in qwen.io.inplace_states


def test_static_cache_generates_like_transformers(hybrid_exported_dir, hybrid_model_dir):
    """--cache static: the attention layer's buffers are written in place (TensorScatter), the conv
    state is bound in place too; tokens equal transformers', batch 3 left-padded, greedy and beam."""
    folder = hybrid_exported_dir("lfm2", "--cache", "static", "--max-cache-len", "160")
    model = ORTModelForCausalLM.from_pretrained(folder)
    assert model.io.static and model.io.max_cache_len == 160 and "past_conv.0" in model.io.inplace_states
    import onnx

    ops = [n.op_type for n in onnx.load(folder / "model.onnx", load_external_data=False).graph.node]
    assert ops.count("TensorScatter") == 2
    source = hybrid_model_dir("lfm2")
    reference = checks.reference_model(source)
    batch = checks.encode(source, checks.PROMPTS)
    for kwargs in (dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=4)):
        assert torch.equal(model.generate(**batch, **kwargs), reference.generate(**batch, **kwargs))
    record("lfm2", "static_cache")


def test_static_cache_refused_without_attention(tmp_path):
    from optimum_onnx23 import export

    source = save_tiny_hybrid_model("mamba2", tmp_path / "mamba2")
    with pytest.raises(UnsupportedArchitectureError, match="no attention layer"):
        export(source, tmp_path / "out", cache="static", max_cache_len=64)
    assert not (tmp_path / "out").exists()


# ---- the same folder in the consumers that run hybrid caches --------------------------------------------------------
INTEROP_PROMPT = "Hello world, this is a test"
INTEROP_TOKENS = 16


def _transformers_greedy(source):
    tokenizer = checks.AutoTokenizer.from_pretrained(source)
    ids = tokenizer(INTEROP_PROMPT, return_tensors="pt").input_ids
    expected = checks.reference_model(source).generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=INTEROP_TOKENS, min_new_tokens=INTEROP_TOKENS, do_sample=False
    )
    return ids[0].tolist(), expected[0].tolist(), tokenizer


def test_onnxruntime_genai_runs_the_lfm2_folder(hybrid_exported_dir, hybrid_model_dir, tmp_path):
    """The Hub layout's genai_config.json declares LFM2's conv states under our names; onnxruntime-genai
    0.18's own LFM2 cache feeds them, token for token as transformers."""
    og = pytest.importorskip("onnxruntime_genai")
    from optimum_onnx23.publish import save_pretrained

    layout = save_pretrained(hybrid_exported_dir("lfm2"), tmp_path / "repo", "onnx-community-test/lfm2")
    decoder = layout.genai_config["model"]["decoder"]
    assert layout.genai_config["model"]["type"] == "lfm2" and decoder["conv_cache_size"] == 2
    assert decoder["inputs"]["past_conv_names"] == "past_conv.%d"
    prompt, expected, _ = _transformers_greedy(hybrid_model_dir("lfm2"))
    model = og.Model(str(tmp_path / "repo"))
    params = og.GeneratorParams(model)
    total = len(prompt) + INTEROP_TOKENS
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    assert [int(t) for t in generator.get_sequence(0)] == expected
    record("lfm2", "onnxruntime_genai")


def test_genai_config_refuses_states_genai_cannot_feed(hybrid_exported_dir):
    """Qwen3.5 (genai wants 3-D MRoPE positions) and Mamba-2 states (none in genai 0.18): no config."""
    import json

    from optimum_onnx23.publish.genai_config import GenaiConfigError, make_genai_config
    from optimum_onnx23.publish.onnx_files import find_onnx_models

    folder = hybrid_exported_dir("qwen3_5_text")
    config = json.loads((folder / "config.json").read_text())
    with pytest.raises(GenaiConfigError, match="conv/recurrent states of `qwen3_5_text`"):
        make_genai_config(find_onnx_models(folder)[0], "onnx/model.onnx", config)


def test_transformers_js_runs_the_lfm2_folder(hybrid_exported_dir, hybrid_model_dir, tmp_path):
    """transformers.js builds the first (zero) conv states from the graph's declared shapes and feeds
    `present_conv.*` back as `past_conv.*`: same text as transformers' pipeline."""
    checks.check_transformers_js(hybrid_exported_dir("lfm2"), hybrid_model_dir("lfm2"), tmp_path)
    record("lfm2", "transformers_js")
