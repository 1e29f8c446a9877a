"""Hybrid decoders: attention layers mixed with convolution, state-space or linear-attention layers.

One `HybridExportConfig` (`schema.py`) per `model_type`, collected with the others by the registry
(`families/__init__.py`). An entry says how the config's `layer_types` map to cache kinds and how
big each state is; its `CacheLayout` gives the graph I/O, and the export signature
(`exporters.tracing.signature`) the dynamic shapes, sample inputs and the wrapper, which rebuilds
transformers' `Cache` from the flat tensors inside the trace (`exporters.tracing.export_cache`).

| model_type | layer types -> cache | state shapes (without batch) |
| --- | --- | --- |
| lfm2 | conv -> conv; full_attention -> key/value | conv [hidden, L_cache - 1] |
| qwen3_5_text, qwen3_5_moe_text, qwen3_5_moe, qwen3_next | linear_attention -> conv + recurrent (gated DeltaNet) | conv [2 k_heads k_dim + v_heads v_dim, K - 1], recurrent [v_heads, k_dim, v_dim] |
| granitemoehybrid, bamba, nemotron_h, mamba2 | linear_attention -> conv + ssm (Mamba-2) | conv [expand hidden + 2 groups state, K - 1], ssm [heads, head_dim, state] |
| falcon_h1 | hybrid -> key/value + conv + ssm (parallel attention and Mamba-2) | as above |

Nemotron-H's `mlp` / `moe` layers hold no cache. Routed experts (Qwen3-Next, Qwen3.5-MoE, Granite
4.0-H Tiny / Small, Nemotron-H's MoE layers) are traced through transformers' experts interface like
every MoE decoder's (`exporters/tracing/experts.py`); the entries here say nothing about them. The tracing swaps transformers' chunked scans for
the exportable forms of `exporters/tracing/recurrences.py` (same math, one graph for every length).
"""

from __future__ import annotations

from typing import Callable

from .cache_layout import CacheLayout
from .schema import LAYER_KINDS, Config, HybridExportConfig, layer_types

__all__ = ["HYBRID", "HYBRID_MODEL_TYPES"]


# ---- the families ------------------------------------------------------------------------------------------
def _mamba2_shapes(heads: str, head_dim: str, state: str, groups: str, kernel: str, intermediate: Callable):
    """conv_shape / state_shape readers for a Mamba-2 mixer whose config attributes have these names."""

    def conv(config: Config) -> tuple[int, int]:
        return (intermediate(config) + 2 * getattr(config, groups) * getattr(config, state), getattr(config, kernel) - 1)

    def ssm(config: Config) -> tuple[int, int, int]:
        return (getattr(config, heads), getattr(config, head_dim), getattr(config, state))

    return conv, ssm


def _gdn_conv(config: Config) -> tuple[int, int]:
    keys = config.linear_num_key_heads * config.linear_key_head_dim
    return (2 * keys + config.linear_num_value_heads * config.linear_value_head_dim, config.linear_conv_kernel_dim - 1)


def _gdn_state(config: Config) -> tuple[int, int, int]:
    return (config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim)


def _count(layout: CacheLayout, kind: str) -> int:
    return sum(1 for i in range(layout.num_layers) if kind in layout.kinds(i))


def _attention_layers(config: Config) -> int:
    return sum(1 for t in layer_types(config) if "attention" in LAYER_KINDS.get(t, ()))


# RMSNormalization counts of the fused graph (L layers, A attention layers, the final norm): two
# per layer (one for Nemotron-H and Mamba-2 blocks), q/k norms where the attention has them, and
# gated DeltaNet's per-head norm; Mamba-2's gated norm over groups is not an RMSNormalization.
def _two_per_layer(config: Config, layout: CacheLayout) -> int:
    return 2 * layout.num_layers + 1


def _one_per_layer(config: Config, layout: CacheLayout) -> int:
    return layout.num_layers + 1


def _gdn_norms(config: Config, layout: CacheLayout) -> int:
    return 2 * layout.num_layers + 2 * len(layout.attention_layers) + _count(layout, "recurrent") + 1


_granite_conv, _granite_ssm = _mamba2_shapes(
    "mamba_n_heads", "mamba_d_head", "mamba_d_state", "mamba_n_groups", "mamba_d_conv",
    lambda c: int(c.mamba_expand * c.hidden_size),
)
_falcon_conv, _falcon_ssm = _mamba2_shapes(
    "mamba_n_heads", "mamba_d_head", "mamba_d_state", "mamba_n_groups", "mamba_d_conv",
    lambda c: int(c.mamba_expand * c.hidden_size) if c.mamba_d_ssm is None else c.mamba_d_ssm,
)
_nemotron_conv, _nemotron_ssm = _mamba2_shapes(
    "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel",
    lambda c: c.mamba_num_heads * c.mamba_head_dim,
)
_mamba2_conv, _mamba2_ssm = _mamba2_shapes(
    "num_heads", "head_dim", "state_size", "n_groups", "conv_kernel", lambda c: int(c.expand * c.hidden_size)
)

HYBRID: tuple[HybridExportConfig, ...] = (
    HybridExportConfig(
        "lfm2",
        conv_shape=lambda c: (c.hidden_size, c.conv_L_cache - 1),
        rotary_layers=_attention_layers,
        # operator + ffn norm per layer, q/k layernorms per attention layer, the final norm
        norms=lambda c, layout: 2 * layout.num_layers + 2 * len(layout.attention_layers) + 1,
        notes="short causal convolutions (conv state) and attention",
    ),
    *(
        HybridExportConfig(
            model_type,
            state_kind="recurrent",
            conv_shape=_gdn_conv,
            state_shape=_gdn_state,
            scan_chunk=lambda c: 64,  # transformers' torch_chunk_gated_delta_rule default
            # interleaved partial MRoPE: Mul/Add in the graph, not a RotaryEmbedding pattern
            rotary_layers=None,
            norms=_gdn_norms,
            decoder_config=decoder,
            notes="gated DeltaNet (conv + recurrent state) and gated attention; MRoPE not fused"
            + ("; routed experts with a gated shared expert" if "moe" in model_type else "")
            + (f"; the text decoder of a multimodal checkpoint, exported as {model_type}_text" if decoder else ""),
        )
        for model_type, decoder in (
            ("qwen3_5_text", None), ("qwen3_5_moe_text", None), ("qwen3_5_moe", "text_config"),
        )
    ),
    HybridExportConfig(
        "qwen3_next",
        state_kind="recurrent",
        conv_shape=_gdn_conv,
        state_shape=_gdn_state,
        scan_chunk=lambda c: 64,
        rotary_layers=_attention_layers,
        norms=_gdn_norms,
        notes="gated DeltaNet (conv + recurrent state) and gated attention; routed experts with a gated shared expert",
    ),
    HybridExportConfig(
        "granitemoehybrid",
        conv_shape=_granite_conv,
        state_shape=_granite_ssm,
        scan_chunk=lambda c: c.mamba_chunk_size,
        # Granite 4.0-H attention has no positions (NoPE) unless position_embedding_type is "rope"
        rotary_layers=lambda c: _attention_layers(c) if c.position_embedding_type == "rope" else 0,
        norms=_two_per_layer,
        notes="Mamba-2 and attention (NoPE); routed experts (Granite 4.0-H Tiny / Small) or a shared MLP alone (Micro)",
    ),
    HybridExportConfig(
        "bamba", conv_shape=_granite_conv, state_shape=_granite_ssm, rotary_layers=_attention_layers, norms=_two_per_layer,
        scan_chunk=lambda c: c.mamba_chunk_size,
        notes="Mamba-2 and attention",
    ),
    HybridExportConfig(
        "falcon_h1", conv_shape=_falcon_conv, state_shape=_falcon_ssm, rotary_layers=_attention_layers, norms=_two_per_layer,
        scan_chunk=lambda c: c.mamba_chunk_size,
        notes="Mamba-2 beside attention in every layer",
    ),
    HybridExportConfig(
        "nemotron_h", conv_shape=_nemotron_conv, state_shape=_nemotron_ssm, rotary_layers=None, norms=_one_per_layer,
        scan_chunk=lambda c: c.chunk_size,
        notes="Mamba-2, attention (no positions), MLP/MoE layers",
    ),
    HybridExportConfig(
        "mamba2",
        conv_shape=_mamba2_conv,
        state_shape=_mamba2_ssm,
        scan_chunk=lambda c: c.chunk_size,
        rotary_layers=None,
        norms=_one_per_layer,
        uses_position_ids=False,
        notes="Mamba-2 only (no attention, no positions)",
    ),
)

HYBRID_MODEL_TYPES: tuple[str, ...] = tuple(entry.model_type for entry in HYBRID)
