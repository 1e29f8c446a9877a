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
}

ARCHITECTURES = sorted(TINY_CONFIGS)


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
