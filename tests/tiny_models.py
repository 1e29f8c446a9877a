"""Tiny random decoders (seeded) for every supported architecture, built from configs only.

Each uses head_dim 16 and GQA (4 query heads, 2 kv heads) where the architecture allows it, and
the bundled tokenizer's vocabulary so that the same folder serves export and generation tests.
"""

from __future__ import annotations

import json
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

TINY_CONFIGS: dict[str, dict] = {
    "llama": {},
    # A window shorter than the validation/generation lengths, so the sliding mask is exercised.
    "mistral": dict(sliding_window=6),
    "qwen2": dict(use_sliding_window=False),
    "qwen3": dict(head_dim=16),
    "phi3": {},
    "gemma2": dict(head_dim=16, sliding_window=6, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3_text": dict(head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2),
    "granite": dict(embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.0),
    "olmo2": {},
    "smollm3": dict(no_rope_layers=[1, 0]),
}

ARCHITECTURES = sorted(TINY_CONFIGS)


def tiny_config(model_type: str, num_layers: int = 2):
    extra = TINY_CONFIGS[model_type]
    kwargs = extra if model_type == "gpt2" else {**_COMMON, **extra}
    layers_key = "n_layer" if model_type == "gpt2" else "num_hidden_layers"
    return AutoConfig.for_model(model_type, **{**kwargs, layers_key: num_layers})


def build_tiny_model(model_type: str, seed: int = 0, num_layers: int = 2):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, num_layers))
    # Random init is near-uniform over the vocab; scale it up so greedy/beam choices are not ties.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
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


# Mixture-of-Experts decoders: 8 experts, top-2, so that decode rows (rows * k < experts) take the
# gathered-experts branch of the graph and prefill the dense one; small expert MLPs.
_MOE = dict(num_experts_per_tok=2)
TINY_MOE_CONFIGS: dict[str, dict] = {
    "mixtral": dict(_MOE, num_local_experts=8, sliding_window=6),
    "qwen2_moe": dict(_MOE, num_experts=8, moe_intermediate_size=32, shared_expert_intermediate_size=64, use_sliding_window=False),
    "qwen3_moe": dict(_MOE, num_experts=8, moe_intermediate_size=32, norm_topk_prob=True, head_dim=16),
    "olmoe": dict(_MOE, num_experts=8, intermediate_size=32),
    "granitemoe": dict(
        _MOE, num_local_experts=8, intermediate_size=32,
        embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.0,
    ),
    "phimoe": dict(_MOE, num_local_experts=8, intermediate_size=32, sliding_window=6),
    # Attention sinks, alternating sliding/full layers, clamped SwiGLU experts with biases.
    "gpt_oss": dict(
        _MOE, num_local_experts=8, intermediate_size=32, head_dim=16, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"], swiglu_limit=2.0,
        rope_parameters=dict(
            rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
            original_max_position_embeddings=8,
        ),
    ),
    # MLA; layer 0 dense, layer 1 MoE with grouped top-k (2 of 4 groups), routed scaling, a shared expert.
    "deepseek_v3": dict(
        _MOE, n_routed_experts=8, n_group=4, topk_group=2, n_shared_experts=1, moe_intermediate_size=32,
        first_k_dense_replace=1, routed_scaling_factor=2.5, q_lora_rank=32, kv_lora_rank=32,
        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, num_key_value_heads=4,
    ),
    "ernie4_5_moe": dict(
        moe_num_experts=8, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=1,
        moe_layer_start_index=1, moe_layer_end_index=1, head_dim=16,
    ),
    # Partial rotary; layer 0 dense; grouped top-k with a score-correction bias; a shared expert.
    "glm4_moe": dict(
        _MOE, n_routed_experts=8, n_group=2, topk_group=1, n_shared_experts=1, moe_intermediate_size=32,
        first_k_dense_replace=1, routed_scaling_factor=1.5, head_dim=16,
    ),
}
TINY_CONFIGS.update(TINY_MOE_CONFIGS)
ARCHITECTURES = sorted(TINY_CONFIGS)


def _randomize_gating_biases(model) -> None:
    """Zero-initialized routing biases (DeepSeek/GLM's score correction, ERNIE's moe_statics, expert
    biases) set to random values, so that the export is checked on the routing they change."""
    generator = torch.Generator().manual_seed(1)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if ("bias" in name or "moe_statics" in name) and tensor.is_floating_point() and not tensor.any():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
