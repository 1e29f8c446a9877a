"""Mixture-of-Experts decoders: one entry per `model_type` (the fields: `schema.py`).

Their experts are transformers' experts modules, found by that interface and traced with static
shapes (`exporters.tracing.experts`) whatever the entry says; the router and shared experts are each
family's own transformers code. An entry says only what differs in the rest of the decoder (q/k
norms, partial rotary, MLA's cache): adding a MoE family is adding a line here, and a tiny config
and its op counts in the tests."""

from __future__ import annotations

from .schema import MoeExportConfig, mla_cache_dims, partial_rotary

__all__ = ["MOE"]

MOE: tuple[MoeExportConfig, ...] = (
    MoeExportConfig("mixtral", sliding_window_attr="sliding_window"),
    MoeExportConfig("qwen2_moe", sliding_window_attr="sliding_window", notes="shared expert with a sigmoid gate"),
    MoeExportConfig("qwen3_moe", qk_norm=True, sliding_window_attr="sliding_window"),
    MoeExportConfig("olmoe", qk_norm=True, notes="full-width q/k norms"),
    MoeExportConfig("granitemoe", notes="embedding, attention, residual and logits multipliers"),
    MoeExportConfig(
        "phimoe", norm_op="LayerNormalization", sliding_window_attr="sliding_window", notes="LayerNorm; sparsemixer routing"
    ),
    MoeExportConfig(
        "gpt_oss",
        sliding_window_attr="sliding_window",
        fused_attention=False,
        unfused={
            "Attention": "attention sinks (a learned per-head logit in the softmax's denominator) have no standard op: "
            "ONNX Attention-23/24 take no sink, so the attention stays MatMul/Softmax/MatMul"
        },
        notes="clamped SwiGLU experts with biases; router bias; attention sinks; alternating sliding/full layers",
    ),
    MoeExportConfig(
        "deepseek_v3",
        rotary_layers=lambda config: config.num_hidden_layers,  # on the shared roped key and the queries' rope part
        # Multi-head latent attention: the cache holds the compressed latent, one head per layer
        # (`key` = the normalized kv latent, `value` = the roped shared key); every step expands them
        # to per-head keys and values (`kv_b_proj`) before a standard Attention.
        kv_layout=mla_cache_dims,
        # the kv latent's norm and, with a q LoRA, the q latent's, besides the two of every layer
        norm_count=lambda c: c.num_hidden_layers * (3 + (c.q_lora_rank is not None)) + 1,
        notes="MLA with a latent cache; grouped top-k routing with score correction and routed scaling; shared experts; "
        "first_k_dense_replace dense layers",
    ),
    MoeExportConfig(
        "ernie4_5_moe",
        rotary_interleaved=True,
        notes="shared experts; router score correction (moe_statics); dense layers before moe_layer_start_index",
    ),
    MoeExportConfig(
        "glm4_moe", rotary_dim=partial_rotary, notes="partial rotary; grouped top-k routing with score correction and routed scaling; shared experts"
    ),
    # ---- by building block: the experts interface + attention the dense entries already cover --------------
    # plain GQA attention, RMSNorm, rotary: routing differs (softmax / sigmoid, grouped top-k, shared experts)
    *(MoeExportConfig(model_type, notes=notes) for model_type, notes in (
        ("aria_text", "shared experts; softmax top-k routing"),
        ("granitemoeshared", "granitemoe with a shared MLP; embedding, attention, residual and logits multipliers"),
        ("minicpm5_moe", "grouped top-k sigmoid routing with score correction; shared experts; dense layers by mlp_layer_types"),
        ("solar_open", "grouped top-k sigmoid routing with score correction and routed scaling; shared experts"),
    )),
    # ... with per-head q/k RMSNorms
    *(MoeExportConfig(model_type, qk_norm=True, sliding_window_attr=window, notes=notes) for model_type, window, notes in (
        ("dots1", "sliding_window", "grouped top-k sigmoid routing; shared experts; first_k_dense_replace dense layers"),
        ("flex_olmo", None, "olmoe-style softmax routing; full-width q/k norms"),
        ("hunyuan_v1_moe", None, "softmax top-k routing; shared MLP"),
        ("hy_v3", None, "sigmoid routing with score correction; shared experts; dense layers by mlp_layer_types"),
        ("mellum", "sliding_window", "softmax top-k routing; sliding/full layer types"),
        ("minimax_m2", None, "sigmoid routing with score correction; full-width q/k norms"),
        ("minimax_m3_vl_text", None, "the text decoder of MiniMax-M3-VL: sigmoid routing with score correction"),
        # Glm4MoeForCausalLM under other model types, with q/k norms on (use_qk_norm)
        ("param2moe", None, "glm4_moe's decoder with q/k norms; grouped top-k routing"),
        ("sarvam_moe", None, "glm4_moe's decoder with q/k norms; grouped top-k routing"),
    )),
    # partial rotary on the full-attention layers (rope parameters per layer type); sliding layers full-width
    MoeExportConfig(
        "laguna", qk_norm=True, rotary_dim=lambda c: int(c.head_dim * c.rope_parameters["full_attention"]["partial_rotary_factor"]),
        sliding_window_attr="sliding_window", notes="sigmoid routing; shared expert; per-layer-type rope; dense layers by mlp_layer_types",
    ),
)
