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
