"""Tiny random decoders (seeded) for every supported architecture, built from configs only.

Each uses head_dim 16 and GQA (4 query heads, 2 kv heads) where the architecture allows it, and
the bundled tokenizer's vocabulary so that the same folder serves export and generation tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "optimum_onnx23" / "data" / "tiny-llama"
VOCAB = json.loads((BUNDLED / "config.json").read_text())["vocab_size"]

_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)

# Multi-head families (no GQA in the architecture) get kv heads = query heads.
_MHA = dict(num_key_value_heads=4)
# The GPT-2 naming (n_embd, n_layer, ...) of the older families.
_GPT = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
# The vision tower of multimodal checkpoints whose text decoder is exported (gemma3).
_TINY_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16)

TINY_CONFIGS: dict[str, dict] = {
    "apertus": {},
    "arcee": dict(head_dim=16),
    "bloom": dict(n_layer=2, n_head=4, hidden_size=64, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=3),
    "codegen": dict(_GPT, n_ctx=256, rotary_dim=8),
    "cohere": dict(use_qk_norm=True),
    "cohere2": dict(head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
    "ernie4_5": dict(head_dim=16),
    "exaone4": dict(sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
    # falcon-7b's layout: one shared kv head, attention and MLP in parallel, rotary positions.
    "falcon": dict(
        num_key_value_heads=None, multi_query=True, parallel_attn=True, new_decoder_architecture=False, alibi=False, ffn_hidden_size=128
    ),
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=6, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    # The text decoder of a Gemma3ForConditionalGeneration checkpoint (vision tower and projector in the file).
    "gemma3": dict(
        text_config=dict(head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
        vision_config=_TINY_SIGLIP,
        mm_tokens_per_image=4,
    ),
    "gemma3_text": dict(head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
    "gemma4_text": dict(
        head_dim=16, global_head_dim=32, sliding_window=6, layer_types=["sliding_attention", "full_attention"],
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB,
    ),
    "glm": dict(head_dim=16),
    "glm4": dict(head_dim=16),
    "gpt2": dict(_GPT),
    "gpt_bigcode": dict(_GPT, n_inner=128, multi_query=True),
    "gpt_neox": dict(_MHA),
    "gptj": dict(_GPT, rotary_dim=8),
    "granite": dict(embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.0),
    "helium": dict(head_dim=16),
    "hunyuan_v1_dense": dict(head_dim=16),
    "llama": {},
    # MLA: queries and keys/values through low-rank projections, keys [nope 16 | rope 8], values 16.
    "minicpm3": dict(_MHA, q_lora_rank=32, kv_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, head_dim=8),
    "ministral": dict(head_dim=16, sliding_window=6, layer_types=["sliding_attention", "sliding_attention"]),
    # A window shorter than the validation/generation lengths, so the sliding mask is exercised.
    "mistral": dict(sliding_window=6),
    "nemotron": dict(head_dim=16),
    "olmo": dict(_MHA, clip_qkv=8.0),
    "olmo2": {},
    "olmo3": dict(sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
    "opt": dict(_MHA, ffn_dim=128, word_embed_proj_dim=64),
    "phi": dict(_MHA),
    "phi3": {},
    "qwen2": dict(use_sliding_window=False),
    "qwen3": dict(head_dim=16),
    "seed_oss": dict(head_dim=16, attention_bias=True),
    "smollm3": dict(no_rope_layers=[1, 0]),
    "stablelm": dict(_MHA, use_qkv_bias=True),
    "starcoder2": dict(sliding_window=6, use_bias=True),
    # By building block (families/dense.py): llama-style attention with another normalization or window.
    "apertus1p5_text": {},
    "bitnet": {},
    "cwm": dict(head_dim=16, sliding_window=6, layer_types=["full_attention", "sliding_attention"]),
    "exaone": dict(head_dim=16),
    "hyperclovax": dict(head_dim=16),
    "internlm3": dict(head_dim=16),
    "iquestcoder": dict(head_dim=16),
    "jais2": dict(head_dim=16),
    "ministral3": dict(head_dim=16, sliding_window=6),
    "vaultgemma": dict(head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
}


def tiny_config(model_type: str, num_layers: int = 2):
    extra = dict(TINY_CONFIGS[model_type])
    if "text_config" in extra:  # multimodal checkpoint: the tiny decoder is its text config
        extra["text_config"] = {**_COMMON, **extra["text_config"], "num_hidden_layers": num_layers}
        return AutoConfig.for_model(model_type, **extra)
    if "n_layer" in extra:
        return AutoConfig.for_model(model_type, **{**extra, "n_layer": num_layers})
    kwargs = {k: v for k, v in {**_COMMON, **extra, "num_hidden_layers": num_layers}.items() if v is not None}
    return AutoConfig.for_model(model_type, **kwargs)  # (a None in TINY_CONFIGS drops a common key)


def build_tiny_model(model_type: str, seed: int = 0, num_layers: int = 2):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, num_layers))
    # Random init is near-uniform over the vocab; scale it up so greedy/beam choices are not ties.
    # Norm weights and biases start as constants (ones, zeros) that a graph optimizer may merge
    # (two LayerNorms of one input with equal parameters are one node), which trained weights
    # never are: give them their own values.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
            else:
                p.add_(0.1 * torch.randn_like(p))
        if model_type in TINY_MOE_CONFIGS:
            _randomize_gating_biases(model)
    return model.eval()


def save_tiny_model(model_type: str, folder: Path, seed: int = 0, num_layers: int = 2) -> Path:
    """Save a seeded tiny model plus the bundled tokenizer into `folder` (once, across xdist workers)."""
    folder = Path(folder)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").exists():
            model = build_tiny_model(model_type, seed, num_layers)
            model.generation_config.pad_token_id = 3
            model.save_pretrained(folder)
            AutoTokenizer.from_pretrained(BUNDLED).save_pretrained(folder)
    return folder


# ---- hybrid decoders (conv / state-space / linear-attention caches; tests/test_hybrid_caches.py) ----------
# Kept out of ARCHITECTURES: the generic tests assume a past_key_values-only cache. Two layers, one
# of each kind (Falcon-H1: every layer has both; Mamba-2: no attention), small state sizes, and a
# Mamba chunk of 4 / a DeltaNet chunk of transformers' 64 so that prompts span several chunks.
_MAMBA = dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=2, mamba_d_conv=4, mamba_expand=1, mamba_chunk_size=4)
TINY_HYBRID_CONFIGS: dict[str, dict] = {
    "lfm2": dict(layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False, conv_L_cache=3),
    "qwen3_5_text": dict(
        head_dim=16,
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]},
    ),
    # Hybrid x MoE, shaped like the released checkpoints: DeltaNet and attention layers, routed experts
    # (4, top-2) and a gated shared expert in every layer; Granite 4.0-H Tiny / Small: Mamba-2 and NoPE
    # attention, routed experts beside the shared MLP. Their experts are transformers' experts modules.
    "qwen3_next": dict(
        head_dim=16,
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, partial_rotary_factor=0.5,
    ),
    # A Qwen3.5-MoE multimodal checkpoint (vision tower in the file): its text decoder is exported.
    "qwen3_5_moe": dict(
        text_config=dict(
            head_dim=16,
            layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, num_position_embeddings=16),
    ),
    "granitemoehybrid": dict(
        layer_types=["linear_attention", "full_attention"], num_local_experts=4, num_experts_per_tok=2, intermediate_size=32,
        shared_intermediate_size=64, embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5,
        logits_scaling=2.0, **_MAMBA,
    ),
    "bamba": dict(attn_layer_indices=[1], **_MAMBA),
    "falcon_h1": dict(head_dim=16, mamba_d_ssm=64, **_MAMBA),
    "nemotron_h": dict(
        layers_block_type=["linear_attention", "full_attention", "mlp"], head_dim=16,
        mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=8, n_groups=2, conv_kernel=4, chunk_size=4,
    ),
    "mamba2": dict(num_heads=8, head_dim=16, state_size=8, n_groups=2, conv_kernel=4, expand=2, chunk_size=4),
}
TINY_HYBRID_CONFIGS["qwen3_5_moe_text"] = TINY_HYBRID_CONFIGS["qwen3_5_moe"]["text_config"]


def tiny_hybrid_config(model_type: str):
    extra = dict(TINY_HYBRID_CONFIGS[model_type])
    if "text_config" in extra:  # multimodal checkpoint: the tiny decoder is its text config
        text = {**_COMMON, **extra["text_config"]}
        text["num_hidden_layers"] = len(text["layer_types"])
        return AutoConfig.for_model(model_type, **{**extra, "text_config": text})
    kwargs = {**_COMMON, **extra}
    layers = kwargs.get("layer_types") or kwargs.get("layers_block_type")
    kwargs["num_hidden_layers"] = len(layers) if layers else 2
    return AutoConfig.for_model(model_type, **kwargs)


def build_tiny_hybrid_model(model_type: str, seed: int = 0):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    config = tiny_hybrid_config(model_type)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = auto.from_config(config)
    with torch.no_grad():  # as build_tiny_model: logits far from ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return model.eval()


def save_tiny_hybrid_model(model_type: str, folder: Path, seed: int = 0) -> Path:
    folder = Path(folder)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").exists():
            model = build_tiny_hybrid_model(model_type, seed)
            model.generation_config.pad_token_id = 3
            model.save_pretrained(folder)
            AutoTokenizer.from_pretrained(BUNDLED).save_pretrained(folder)
    return folder


# Mixture-of-Experts decoders: 4 experts, top-2 (a decode row takes half of them, so the per-expert
# `If`s both run and skip; beyond the per-expert limit, rows * k < experts take the gathered branch
# and prefill the dense one); small expert MLPs. Each expert is one If per layer to trace and
# optimize: 4, not 8, halves the MoE families' share of the suite's time.
MOE_EXPERTS = 4
_MOE = dict(num_experts_per_tok=2)
TINY_MOE_CONFIGS: dict[str, dict] = {
    "mixtral": dict(_MOE, num_local_experts=MOE_EXPERTS, sliding_window=6),
    "qwen2_moe": dict(_MOE, num_experts=MOE_EXPERTS, moe_intermediate_size=32, shared_expert_intermediate_size=64, use_sliding_window=False),
    "qwen3_moe": dict(_MOE, num_experts=MOE_EXPERTS, moe_intermediate_size=32, norm_topk_prob=True, head_dim=16),
    "olmoe": dict(_MOE, num_experts=MOE_EXPERTS, intermediate_size=32),
    "granitemoe": dict(
        _MOE, num_local_experts=MOE_EXPERTS, intermediate_size=32,
        embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.0,
    ),
    "phimoe": dict(_MOE, num_local_experts=MOE_EXPERTS, intermediate_size=32, sliding_window=6),
    # Attention sinks, alternating sliding/full layers, clamped SwiGLU experts with biases.
    "gpt_oss": dict(
        _MOE, num_local_experts=MOE_EXPERTS, intermediate_size=32, head_dim=16, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"], swiglu_limit=2.0,
        rope_parameters=dict(
            rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
            original_max_position_embeddings=8,
        ),
    ),
    # MLA; layer 0 dense, layer 1 MoE with grouped top-k (1 of 2 groups), routed scaling, a shared expert.
    "deepseek_v3": dict(
        _MOE, n_routed_experts=MOE_EXPERTS, n_group=2, topk_group=1, n_shared_experts=1, moe_intermediate_size=32,
        first_k_dense_replace=1, routed_scaling_factor=2.5, q_lora_rank=32, kv_lora_rank=32,
        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, num_key_value_heads=4,
    ),
    "ernie4_5_moe": dict(
        moe_num_experts=MOE_EXPERTS, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=1,
        moe_layer_start_index=1, moe_layer_end_index=1, head_dim=16,
    ),
    # Partial rotary; layer 0 dense; grouped top-k with a score-correction bias; a shared expert.
    "glm4_moe": dict(
        _MOE, n_routed_experts=MOE_EXPERTS, n_group=2, topk_group=1, n_shared_experts=1, moe_intermediate_size=32,
        first_k_dense_replace=1, routed_scaling_factor=1.5, head_dim=16,
    ),
    # By building block (families/moe.py): each family's own router and shared experts around the
    # experts interface; 4 experts top-2, layer 0 dense where the family has dense layers.
    "aria_text": dict(moe_num_experts=MOE_EXPERTS, moe_topk=2, moe_num_shared_experts=1, intermediate_size=32, head_dim=16),
    "granitemoeshared": dict(
        _MOE, num_local_experts=MOE_EXPERTS, intermediate_size=32, shared_intermediate_size=32,
        embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.0,
    ),
    "minicpm5_moe": dict(
        _MOE, n_routed_experts=MOE_EXPERTS, moe_intermediate_size=32, n_group=2, topk_group=1, n_shared_experts=1, head_dim=16,
        mlp_layer_types=["dense", "sparse"],
    ),
    "solar_open": dict(_MOE, n_routed_experts=MOE_EXPERTS, moe_intermediate_size=32, n_group=2, topk_group=1, n_shared_experts=1, head_dim=16),
    "dots1": dict(
        _MOE, n_routed_experts=MOE_EXPERTS, moe_intermediate_size=32, n_group=2, topk_group=1, n_shared_experts=1,
        first_k_dense_replace=1, sliding_window=6, head_dim=16,
    ),
    "flex_olmo": dict(_MOE, num_experts=MOE_EXPERTS, intermediate_size=32),
    "hunyuan_v1_moe": dict(num_experts=MOE_EXPERTS, moe_topk=2, intermediate_size=32, head_dim=16),
    "hy_v3": dict(
        _MOE, num_experts=MOE_EXPERTS, moe_intermediate_size=32, num_shared_experts=1, head_dim=16, mlp_layer_types=["dense", "sparse"],
    ),
    "mellum": dict(
        _MOE, num_local_experts=MOE_EXPERTS, moe_intermediate_size=32, head_dim=16, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "minimax_m2": dict(_MOE, num_local_experts=MOE_EXPERTS, intermediate_size=32, head_dim=16),
    "minimax_m3_vl_text": dict(_MOE, num_local_experts=MOE_EXPERTS, intermediate_size=32, head_dim=16),
    "param2moe": dict(
        _MOE, n_routed_experts=MOE_EXPERTS, moe_intermediate_size=32, n_group=2, topk_group=1, first_k_dense_replace=1, n_shared_experts=1, head_dim=16,
    ),
    "sarvam_moe": dict(
        _MOE, n_routed_experts=MOE_EXPERTS, moe_intermediate_size=32, n_group=2, topk_group=1, first_k_dense_replace=1, n_shared_experts=1, head_dim=16,
    ),
    "laguna": dict(
        _MOE, num_experts=MOE_EXPERTS, moe_intermediate_size=32, shared_expert_intermediate_size=32, head_dim=16, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
    ),
}
TINY_CONFIGS.update(TINY_MOE_CONFIGS)

# Families whose building blocks another family of the default suite already runs (their entry says
# only what differs): each one's tests are the per-family tests below, run on request with
# OPTIMUM_ONNX23_ALL_FAMILIES=1 (scripts/architectures_doc.py --run sets it), so the default suite
# pays for each block once. Value: the default-suite family with the same blocks.
SAME_BLOCKS_AS: dict[str, str] = {
    # llama-style attention under another model type, or with sliding/full layer types
    "exaone": "llama", "internlm3": "llama", "iquestcoder": "llama", "cwm": "ministral", "ministral3": "mistral",
    "vaultgemma": "gemma2",
    # the normalization differs: q/k norms, sub-/post-norms (4 a layer), LayerNorm
    "apertus1p5_text": "apertus", "bitnet": "olmo2", "hyperclovax": "olmo2", "jais2": "starcoder2",
    # experts interface + softmax routing (+ shared experts), as qwen2_moe / olmoe / qwen3_moe
    "aria_text": "qwen2_moe", "granitemoeshared": "granitemoe", "flex_olmo": "olmoe", "hunyuan_v1_moe": "qwen3_moe",
    "mellum": "qwen3_moe",
    # experts interface + sigmoid (grouped) top-k with score correction (+ q/k norms), as deepseek_v3 / glm4_moe
    "minicpm5_moe": "deepseek_v3", "solar_open": "glm4_moe", "dots1": "glm4_moe", "hy_v3": "glm4_moe",
    "minimax_m2": "glm4_moe", "minimax_m3_vl_text": "glm4_moe", "param2moe": "glm4_moe", "sarvam_moe": "glm4_moe",
    # hybrid x MoE: gated DeltaNet + attention + routed experts, as the multimodal qwen3_5_moe's decoder
    "qwen3_5_moe_text": "qwen3_5_moe", "qwen3_next": "qwen3_5_moe",
    # Mamba-2 + attention, as granitemoehybrid
    "bamba": "granitemoehybrid",
}
ALL_FAMILIES = os.environ.get("OPTIMUM_ONNX23_ALL_FAMILIES", "").strip().lower() in ("1", "true", "yes")


def families_in_run(families) -> list[str]:
    """`families` that this run tests: all with OPTIMUM_ONNX23_ALL_FAMILIES=1, else one per building block."""
    return sorted(f for f in families if ALL_FAMILIES or f not in SAME_BLOCKS_AS)


ARCHITECTURES = families_in_run(TINY_CONFIGS)
HYBRID_ARCHITECTURES = families_in_run(TINY_HYBRID_CONFIGS)


def _randomize_gating_biases(model) -> None:
    """Zero-initialized routing biases (DeepSeek/GLM's score correction, ERNIE's moe_statics, expert
    biases) set to random values, so that the export is checked on the routing they change."""
    generator = torch.Generator().manual_seed(1)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if ("bias" in name or "moe_statics" in name) and tensor.is_floating_point() and not tensor.any():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
