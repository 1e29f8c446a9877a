"""Hybrid decoders with Mamba-2 layers (conv + ssm states): Granite 4 (`granitemoehybrid`, with routed
experts as Granite 4.0-H Tiny / Small have), Bamba,
Falcon-H1 (attention and Mamba-2 in every layer), Nemotron-H (with an MLP-only layer) and Mamba-2,
exported from tiny seeded configs with default flags, against transformers on the same weights.
The tiny configs use a Mamba chunk of 4, so prompts span many chunks (tests/hybrid_checks.py)."""

from __future__ import annotations

import hybrid_checks as checks
import pytest
from architecture_records import record, record_export
from tiny_models import families_in_run

from optimum_onnx23.pipelines import ORTModelForCausalLM

# bamba runs the same Mamba-2 mixer and cache code as granitemoehybrid (with rotary attention):
# tested with OPTIMUM_ONNX23_ALL_FAMILIES=1 (tiny_models.SAME_BLOCKS_AS; these two files' CI budget is ~4 min on 2 cores).
FAMILIES = families_in_run(["granitemoehybrid", "falcon_h1", "nemotron_h", "mamba2", "bamba"])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_export_validates_every_state(model_type, hybrid_exported_dir):
    checks.check_export(hybrid_exported_dir(model_type), model_type)
    record_export(model_type, hybrid_exported_dir(model_type))


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


def test_sampling_reproduces_under_seed(hybrid_exported_dir, hybrid_model_dir):
    checks.check_sampling(hybrid_exported_dir("granitemoehybrid"), hybrid_model_dir("granitemoehybrid"))


def test_mamba2_layout(hybrid_exported_dir):
    """No attention layer: no past_key_values, no position_ids; conv [expand*hidden + 2*groups*state, K-1]
    and ssm [heads, head_dim, state] per layer; Nemotron-H's MLP layer holds nothing."""
    mamba = ORTModelForCausalLM.from_pretrained(hybrid_exported_dir("mamba2"))
    assert mamba.io.past_names() == ["past_conv.0", "past_ssm.0", "past_conv.1", "past_ssm.1"]
    assert not mamba.io.has_position_ids
    assert mamba.io.cache[0].shape == (128 + 2 * 2 * 8, 3) and mamba.io.cache[1].shape == (8, 16, 8)
    nemotron = ORTModelForCausalLM.from_pretrained(hybrid_exported_dir("nemotron_h"))
    assert {c.layer for c in nemotron.io.cache} == {0, 1}  # layer 2 is an MLP


def test_transformers_js_runs_the_falcon_h1_folder(hybrid_exported_dir, hybrid_model_dir, tmp_path):
    """transformers.js gives every Falcon-H1 layer past_conv/past_ssm and past_key_values (its config has
    no layer_types), as our graph declares: same text as transformers. (Granite 4 and Nemotron-H do
    not run there: transformers.js looks for layer types `mamba`/`attention`, transformers 5 writes
    `linear_attention`/`full_attention`, so it feeds none of the cache inputs.)"""
    checks.check_transformers_js(hybrid_exported_dir("falcon_h1"), hybrid_model_dir("falcon_h1"), tmp_path)
    record("falcon_h1", "transformers_js")


def test_layouts_from_default_configs():
    """Each family's layout from transformers' default config (real attribute sets: Mamba-2's config
    has no attention head counts), without building a model."""
    from transformers import AutoConfig

    from optimum_onnx23.exporters import get_export_config
    from optimum_onnx23.exporters.families import HYBRID_MODEL_TYPES

    gdn, mamba = {"conv", "recurrent", "key", "value"}, {"conv", "ssm"}
    expected = {  # transformers' defaults: LFM2 all attention, Granite 4 / Bamba all Mamba-2
        "lfm2": {"key", "value"}, "qwen3_5": gdn, "qwen3_5_text": gdn, "qwen3_5_moe_text": gdn, "qwen3_5_moe": gdn, "qwen3_next": gdn, "granitemoehybrid": mamba, "bamba": mamba,
        "falcon_h1": mamba | {"key", "value"}, "nemotron_h": mamba | {"key", "value"}, "mamba2": mamba,
    }
    assert set(HYBRID_MODEL_TYPES) == set(expected)
    for model_type in HYBRID_MODEL_TYPES:
        entry = get_export_config(model_type)  # multimodal checkpoints: their text decoder's config
        layout = entry.cache_layout(entry.text_config(AutoConfig.for_model(model_type)))
        assert {t.kind for t in layout.tensors} == expected[model_type], model_type
        assert all(isinstance(d, int) for t in layout.tensors if t.is_state for d in t.shape), model_type
