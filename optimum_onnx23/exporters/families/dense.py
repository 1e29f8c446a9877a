"""Dense decoders: one entry per `model_type` (the fields: `schema.py`). Adding a dense family is
adding a line here; the registry (`families/__init__.py`) collects this table."""

from __future__ import annotations

from .schema import (
    Config,
    DecoderExportConfig,
    all_layers,
    head_dim,
    layers_of_type,
    mla_cache_dims,
    partial_rotary,
    per_layer_cache_dims,
)

__all__ = ["DENSE"]


def gemma4_norms(config: Config) -> int:
    """4 block norms and a q norm per layer; k and v norms where the layer computes its own kv
    (not on kv-sharing layers); per-layer-input embeddings add a norm per layer and one overall."""
    layers = config.num_hidden_layers
    own_kv = sum(mode != "reuse" for mode in config.kv_sharing_modes[:layers])
    per_layer_inputs = layers + 1 if config.hidden_size_per_layer_input else 0
    return layers * 5 + 2 * own_kv + per_layer_inputs + 1


DENSE: tuple[DecoderExportConfig, ...] = (
    DecoderExportConfig("llama"),
    DecoderExportConfig("mistral", sliding_window_attr="sliding_window"),
    DecoderExportConfig("qwen2", sliding_window_attr="sliding_window"),
    DecoderExportConfig("qwen3", qk_norm=True, sliding_window_attr="sliding_window"),
    DecoderExportConfig("phi3", sliding_window_attr="sliding_window", notes="fused qkv and gate_up projections"),
    DecoderExportConfig(
        "gemma2",
        norms_per_layer=4,
        sliding_window_attr="sliding_window",
        softcap_attr="attn_logit_softcapping",
        notes="attention softcap fused by optimum_onnx23's softcap_attention rule",
    ),
    DecoderExportConfig("gemma3_text", norms_per_layer=4, qk_norm=True, sliding_window_attr="sliding_window"),
    DecoderExportConfig("gpt2", norm_op="LayerNormalization", positions="learned", notes="learned absolute positions"),
    DecoderExportConfig("granite"),
    DecoderExportConfig("olmo2", qk_norm=True, notes="post-norms only; full-width q/k norms"),
    DecoderExportConfig(
        "smollm3",
        # no_rope_layers[i] == 1 means layer i *uses* rope (transformers' naming).
        rotary_layers=lambda config: sum(config.no_rope_layers[: config.num_hidden_layers]),
        sliding_window_attr="sliding_window",
    ),
    # ---- dense families added for issue 10 (alphabetical) ------------------------------------
    DecoderExportConfig("apertus", qk_norm=True, notes="xIELU activation; per-head q/k norms"),
    DecoderExportConfig("arcee", notes="ReLU^2 MLP without gate"),
    DecoderExportConfig(
        "bloom", norm_op="LayerNormalization", positions="alibi", extra_norms=1,
        notes="ALiBi positions; LayerNorm after the word embeddings",
    ),
    DecoderExportConfig(
        "codegen", norm_op="LayerNormalization", norms_per_layer=1, rotary_dim=lambda c: c.rotary_dim or head_dim(c),
        rotary_interleaved=True, notes="fused qkv interleaved over 4 model-parallel shards",
    ),
    DecoderExportConfig(
        "cohere", norm_op="LayerNormalization", norms_per_layer=1, qk_norm=lambda c: c.use_qk_norm, rotary_interleaved=True, notes="bias-free LayerNorm; logits scaled by logit_scale",
    ),
    DecoderExportConfig(
        "cohere2", norm_op="LayerNormalization", norms_per_layer=1, rotary_layers=layers_of_type("sliding_attention"),
        rotary_interleaved=True, sliding_window_attr="sliding_window",
        notes="rotary on sliding-window layers only; full-attention layers are NoPE",
    ),
    DecoderExportConfig("ernie4_5", rotary_interleaved=True),
    DecoderExportConfig(
        "exaone4", qk_norm=True, sliding_window_attr="sliding_window",
        rotary_layers=lambda c: all_layers(c) if c.sliding_window is None else layers_of_type("sliding_attention")(c),
        notes="post-norms; rotary on sliding-window layers only when the model has them",
    ),
    DecoderExportConfig(
        "falcon", norm_op="LayerNormalization", positions=lambda c: "alibi" if c.alibi else "rotary",
        norms_per_layer=lambda c: (c.num_ln_in_parallel_attn or 2) if c.new_decoder_architecture else (1 if c.parallel_attn else 2),
        kv_heads=lambda c: c.num_kv_heads if c.new_decoder_architecture or not c.multi_query else 1,
        # Its SDPA call broadcasts one kv head over the query heads, which torch's ONNX SDPA
        # translation rejects; the eager path is the same math (fused by the eager_attention rule).
        attn_implementation="eager",
        notes="rotary or ALiBi (config.alibi); multi-query or grouped kv heads",
    ),
    DecoderExportConfig("gemma"),
    DecoderExportConfig(
        "gemma3", decoder_config="text_config", norms_per_layer=4, qk_norm=True, sliding_window_attr="sliding_window",
        # Hub checkpoints name the decoder `language_model.model.*`, transformers 5 `model.language_model.*`.
        key_mapping={r"^(language_model\.model|model\.language_model)\.": "model.", r"^language_model\.lm_head": "lm_head"},
        notes="the text decoder of a Gemma3ForConditionalGeneration checkpoint, exported as gemma3_text",
    ),
    DecoderExportConfig(
        "gemma4_text", norm_count=gemma4_norms, kv_layout=per_layer_cache_dims, sliding_window_attr="sliding_window",
        notes="per-layer cache shapes (full-attention layers: global_head_dim); per-layer input embeddings; "
        "kv-sharing layers keep cache I/O they pass through unchanged",
    ),
    DecoderExportConfig("glm", rotary_dim=partial_rotary, rotary_interleaved=True),
    DecoderExportConfig("glm4", norms_per_layer=4, rotary_dim=partial_rotary, rotary_interleaved=True),
    DecoderExportConfig("gpt_bigcode", norm_op="LayerNormalization", positions="learned", notes="multi-query attention"),
    DecoderExportConfig(
        "gpt_neox", norm_op="LayerNormalization", rotary_dim=partial_rotary,
    ),
    DecoderExportConfig(
        "gptj", norm_op="LayerNormalization", norms_per_layer=1, rotary_dim=lambda c: c.rotary_dim or head_dim(c),
        rotary_interleaved=True,
    ),
    DecoderExportConfig("helium", rotary_interleaved=True),
    DecoderExportConfig("hunyuan_v1_dense", qk_norm=True, notes="q/k norms after the rotary embedding"),
    DecoderExportConfig(
        "minicpm3", norms_per_layer=lambda c: 3 + (c.q_lora_rank is not None), kv_layout=mla_cache_dims,
        unfused={
            "Attention": "multi-head latent attention: the cache holds the compressed latent (as transformers' does) and "
            "kv_b_proj expands it to per-head keys/values before a standard Attention every step; the absorbed form "
            "(attention scored against the latent directly) is not applied",
        },
        notes="MLA: latent KV cache [batch, 1, past, kv_lora_rank] (key) and [batch, 1, past, qk_rope_head_dim] (value)",
    ),
    DecoderExportConfig("ministral", sliding_window_attr="sliding_window"),
    DecoderExportConfig("nemotron", norm_op="LayerNormalization", rotary_dim=partial_rotary, notes="LayerNorm1P (weight + 1); ReLU^2 MLP"),
    DecoderExportConfig("olmo", norm_op="LayerNormalization", notes="LayerNorm without parameters; optional q/k/v clipping"),
    DecoderExportConfig("olmo3", qk_norm=True, sliding_window_attr="sliding_window", notes="post-norms only; full-width q/k norms"),
    DecoderExportConfig("opt", norm_op="LayerNormalization", positions="learned", notes="learned positions offset by 2"),
    DecoderExportConfig(
        "phi", norm_op="LayerNormalization", norms_per_layer=1, qk_norm=lambda c: c.qk_layernorm, rotary_dim=partial_rotary,
    ),
    DecoderExportConfig("seed_oss"),
    DecoderExportConfig(
        "stablelm", norm_op="LayerNormalization", rotary_dim=partial_rotary,
        norm_count=lambda c: c.num_hidden_layers * ((1 if c.use_parallel_residual else 2)
                                                   + (c.num_attention_heads + c.num_key_value_heads if c.qk_layernorm else 0)) + 1, notes="q/k LayerNorms are per head (one per head) when present",
    ),
    DecoderExportConfig("starcoder2", norm_op="LayerNormalization", sliding_window_attr="sliding_window"),
    # ---- by building block: llama-style attention, the normalization differs --------------------------------
    *(DecoderExportConfig(model_type, sliding_window_attr=window, notes=notes) for model_type, window, notes in (
        ("cwm", "sliding_window", "llama with sliding/full layer types"),
        ("exaone", None, "LlamaForCausalLM under another model type"),
        ("internlm3", None, "LlamaForCausalLM under another model type"),
        ("iquestcoder", None, "LlamaForCausalLM under another model type"),
        ("ministral3", "sliding_window", "mistral-style sliding window"),
        ("vaultgemma", "sliding_window", "gemma with sliding/full layer types"),
    )),
    DecoderExportConfig("apertus1p5_text", qk_norm=True, notes="apertus' decoder with q/k norms"),
    DecoderExportConfig("bitnet", norms_per_layer=4, notes="sub-norms before o_proj and down_proj; ternary weights stay floats"),
    DecoderExportConfig("hyperclovax", norms_per_layer=4, notes="post-norms after attention and MLP"),
    DecoderExportConfig("jais2", norm_op="LayerNormalization", notes="LayerNorm"),
)
