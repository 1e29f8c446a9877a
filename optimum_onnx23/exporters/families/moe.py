"""Mixture-of-Experts decoders: one entry per `model_type` (the fields: `schema.py`).

Their experts are traced with static shapes (`exporters.tracing.experts`); the router and shared
experts are each family's own transformers code. Adding a MoE family is adding a line here."""

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

)
