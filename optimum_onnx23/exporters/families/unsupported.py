"""Text-decoder model types of transformers 5 that do not export yet: the nearest supported one and
why, in one line each. `get_export_config` puts both into its error; a registered type (including
ones from any table of `exporters.families`) is never looked up here.

Reasons come from trying each type on a tiny random config (transformers 5.24, torch 2.13):
"exports with a provisional entry" means the shared decoder path traced and validated it, but it
has no entry, fused-op expectations or tests yet.
"""

from __future__ import annotations

__all__ = ["NOT_SUPPORTED", "CATEGORIES"]

_ENCODER = "a bidirectional encoder with a causal-LM head (BERT family), not a decoder LLM"
_SEQ2SEQ = "the decoder half of an encoder-decoder model (cross-attention to encoder states); use optimum-onnx's seq2seq export"
_MOE = "a Mixture-of-Experts family without an entry in exporters/families/moe.py yet (its router or experts differ from the 10 there)"
_HYBRID = "recurrent / convolutional / linear-attention state layers without an entry in exporters/families/hybrid.py yet"
_MULTIMODAL = "multimodal model whose text decoder is not separated for export yet"
_PROVISIONAL = "exports with a provisional entry on a tiny config, but has no tested entry yet"

CATEGORIES = {"encoder": _ENCODER, "seq2seq": _SEQ2SEQ, "moe": _MOE, "hybrid": _HYBRID, "multimodal": _MULTIMODAL}

NOT_SUPPORTED: dict[str, tuple[str, str]] = {
    # ---- encoders and encoder-decoder halves ------------------------------------------------
    **{name: ("gpt2", _ENCODER) for name in (
        "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert", "rembert",
        "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl", "xmod",
    )},
    "xlm": ("gpt2", "XLM: a cross-lingual encoder with a causal-LM head"),
    "xlnet": ("gpt2", "XLNet: permutation LM with segment memory (`mems`), no KV cache"),
    "reformer": ("gpt2", "Reformer: LSH / chunked local attention with its own bucketed cache"),
    **{name: ("opt", _SEQ2SEQ) for name in (
        "bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp", "pegasus", "plbart", "prophetnet",
        "trocr", "whisper",
    )},
    "musicgen": ("opt", "audio-codebook decoder with cross-attention to a text encoder"),
    "musicgen_melody": ("opt", "audio-codebook decoder conditioned on text and melody"),
    # ---- Mixture-of-Experts (dense sibling as nearest) --------------------------------------
    **{name: (dense, _MOE) for name, dense in {
        "afmoe": "llama", "axk1": "minicpm3", "axk2": "minicpm3", "beam": "llama", "cohere2_moe": "cohere2",
        "dbrx": "llama", "deepseek_v2": "minicpm3", "deepseek_v32": "minicpm3", "deepseek_v4": "minicpm3",
        "doge": "llama", "dots3_note": "qwen3", "dots3_note_text": "qwen3", "ergo": "llama",
        "exaone_moe": "exaone4", "flint": "qwen3", "glm4_moe_lite": "glm4",
        "glm_moe_dsa": "glm4", "granitemoe_swa": "granite",

        "hy_v4": "hunyuan_v1_dense", "jetmoe": "llama", "kolibri1": "qwen3", "kolibri1_1": "qwen3",
        "llama4": "llama", "llama4_text": "llama", "longcat_flash": "minicpm3", "mimo_v2_flash": "qwen2",

        "sarvam_mla": "minicpm3",
    }.items()},
    # ---- state-space / linear-attention hybrids ----------------------------------------------
    **{name: (dense, _HYBRID) for name, dense in {
        "bailing_hybrid": "llama", "dory": "llama", "falcon_mamba": "falcon",
        "inkling_text": "llama", "inkling2_text": "llama", "inkling2_loop_text": "llama",
        "jamba": "mistral", "kimi_linear": "minicpm3", "lara_mini": "qwen3", "lfm2_moe": "llama",
        "lfm3": "llama", "mamba": "llama", "minimax": "mistral",
        "olmo_hybrid": "olmo3", "qwen4_exp": "qwen3", "qwen4_exp_text": "qwen3", "recurrent_gemma": "gemma", "rwkv": "gpt_neox",
        "xlstm": "llama", "zamba": "mistral", "zamba2": "mistral", "zaya": "llama",
    }.items()},
    # ---- multimodal ---------------------------------------------------------------------------
    **{name: (dense, _MULTIMODAL) for name, dense in {
        "emu3": "llama", "fuyu": "stablelm", "git": "opt", "got_ocr2": "qwen2", "mllama": "llama", "gemma3n": "gemma3",
        "gemma4": "gemma4_text", "gemma4_unified": "gemma4_text", "phi4_multimodal": "phi3", "moss_transcribe_diarize": "qwen3",
    }.items()},
    "gemma4_assistant": ("gemma4_text", "draft model reading the target model's shared KV states (speculative decoding)"),
    "gemma4_unified_assistant": ("gemma4_text", "draft model reading the target model's shared KV states (speculative decoding)"),
    "qwen3_5": ("qwen3_5_text", "the multimodal Qwen3.5 checkpoint: its text decoder is `qwen3_5_text`; loading it from the "
                "multimodal file (decoder_config, as `qwen3_5_moe` does) has no test of its own"),
    "moshi": ("llama", "speech-text model with a depth decoder over audio codebooks"),
    # ---- dense decoders ---------------------------------------------------------------------
    "apertus1p5_text": ("apertus", _PROVISIONAL),
    "biogpt": ("opt", _PROVISIONAL + " (LayerNorm, learned positions)"),
    "bitnet": ("llama", _PROVISIONAL + " (sub-norms before o_proj and down_proj; ternary weights stay floats)"),
    "blt": ("llama", "byte latent transformer (local encoder, patcher, global model): torch.export does not finish"),
    "cohere_compass_text": ("cohere2", "not tried past its config on a tiny model (per-layer-type rope parameters)"),
    "cpmant": ("llama", "CPM-Ant: segment/position buckets and its own cache tuples, not transformers' Cache"),
    "ctrl": ("gpt2", _PROVISIONAL + " (LayerNorm, sinusoidal positions)"),
    "cwm": ("llama", _PROVISIONAL),
    "diffllama": ("llama", "differential attention (two softmax maps subtracted per head): two Attention nodes a layer, no single standard op"),
    "exaone": ("llama", _PROVISIONAL + " (LlamaForCausalLM under another model type)"),
    "gemma3n_text": ("gemma3_text", "per-layer inputs, AltUp and KV sharing; not tried past its config on a tiny model"),
    "gemma4_unified_text": ("gemma4_text", "per-layer head sizes like gemma4_text; needs its entry (per_layer_cache_dims) and tests"),
    "gpt-sw3": ("gpt2", _PROVISIONAL + " (GPT2LMHeadModel under another model type)"),
    "gpt_neo": ("gpt2", "local (windowed) and global attention layers; not tried past its config on a tiny model"),
    "gpt_neox_japanese": ("gpt_neox", "its eager attention is not fused to Attention (exports, 0 Attention nodes)"),
    "granite_swa": ("granite", "exports, but its attention is not fused to Attention (0 nodes)"),
    "hrm_text": ("llama", "hierarchical recurrent loops over the same layers: the cache layout is not one entry per layer"),
    "hyperclovax": ("granite", _PROVISIONAL + " (post-norms)"),
    "internlm3": ("llama", _PROVISIONAL + " (LlamaForCausalLM under another model type)"),
    "iquestcoder": ("llama", _PROVISIONAL + " (LlamaForCausalLM under another model type)"),
    "jais2": ("starcoder2", _PROVISIONAL + " (LayerNorm)"),
    "ministral3": ("ministral", _PROVISIONAL),
    "modernbert-decoder": ("olmo", _PROVISIONAL + " (LayerNorm, alternating local/global layers)"),
    "mpt": ("bloom", "torch.export fails on its ALiBi mask construction (inconsistent symbolic shapes)"),
    "nanochat": ("llama", "exports, but its parameter-free RMSNorm and rotary are not fused (0 nodes)"),
    "openai-gpt": ("gpt2", "GPT-1 has no KV cache in transformers (no text-generation-with-past)"),
    "persimmon": ("stablelm", _PROVISIONAL + " (partial rotary, q/k LayerNorms)"),
    "vaultgemma": ("gemma2", _PROVISIONAL),
    "xglm": ("opt", "exports, but its attention is not fused to Attention (0 nodes)"),
    "youtu": ("minicpm3", "MLA-style attention: the default cache layout does not fit; needs an entry with its cache layout"),
}
