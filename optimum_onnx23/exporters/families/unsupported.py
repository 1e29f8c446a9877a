"""Text-decoder model types of transformers 5 that are refused: the nearest supported one and what
is missing (a layer kind, an op, the check that failed), in one line each. `get_export_config` puts
both into its error; a registered type is never listed here (tests/test_export_errors.py).

Reasons come from exporting each type on a tiny random config (transformers 5.25, torch 2.13), with
transformers' experts modules lowered by interface (exporters/tracing/experts.py): the torch.export
failure line (module, operation), or the fused-op counts an entry would have to state.
"""

from __future__ import annotations

__all__ = ["NOT_SUPPORTED", "CATEGORIES"]

_ENCODER = "a bidirectional encoder with a causal-LM head (BERT family), not a decoder LLM"
_SEQ2SEQ = "the decoder half of an encoder-decoder model (cross-attention to encoder states); use optimum-onnx's seq2seq export"
_MLA = (
    "multi-head latent attention: the cache holds a compressed latent, so the default K/V layout fails in torch.export (cache "
    "concat: 1 latent head where num_key_value_heads are expected); missing: an entry with deepseek_v3's `mla_cache_dims`"
)
_MULTIMODAL = "multimodal model whose text decoder AutoModelForCausalLM does not load alone: missing its `decoder_config` / `key_mapping` entry"
_UNTESTED_MHA = (
    "multi-head attention; with kv heads = heads it traces, but its entry's counts ({}) have no test, so it is refused rather than "
    "exported unverified"
)

CATEGORIES = {"encoder": _ENCODER, "seq2seq": _SEQ2SEQ, "multimodal": _MULTIMODAL}

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
    # ---- Mixture-of-Experts: what is missing, from exporting each on a tiny config (4 experts, top-2) ---------
    # Experts built on transformers' experts interface are lowered whatever the family; these miss something else.
    **{name: ("deepseek_v3", _MLA) for name in ("axk2", "deepseek_v2", "glm4_moe_lite", "sarvam_mla")},
    "deepseek_v32": ("deepseek_v3", _MLA + "; and its sparse-attention indexer (top-k token selection) has no standard op"),
    "glm_moe_dsa": ("deepseek_v3", _MLA + "; and its sparse-attention indexer (top-k token selection) has no standard op"),
    "deepseek_v4": ("deepseek_v3", _MLA + " (with its own compressed-attention layers)"),
    "axk1": ("deepseek_v3", "torch.export fails in AXK1Attention's rotary (`q1 * cos - q2 * sin`: the rope part of the head and the "
             "rotary table disagree, 4 vs 8): missing an MLA entry with its split rope head"),
    "longcat_flash": ("deepseek_v3", "torch.export fails in LongcatFlashMLA's rotary (rope part 4 vs table 8) and its cache is MLA's "
                      "latent: missing an MLA entry (`mla_cache_dims`) and its two attention blocks per layer"),
    "hy_v4": ("hunyuan_v1_dense", "its attention caches fewer kv heads than `num_key_value_heads` (cache concat fails in torch.export): "
              "missing an entry with its cache layout (`kv_layout`)"),
    "mimo_v2_flash": ("qwen2", "sliding and full layers with different kv head counts (cache concat fails in torch.export on layer 1): "
                      "missing a per-layer cache layout (`kv_layout`)"),
    "llama4": ("llama", "its rotary multiplies complex numbers: the ONNX translation has no function for aten.unsqueeze on complex values"),
    "llama4_text": ("llama", "its rotary multiplies complex numbers: the ONNX translation has no function for aten.unsqueeze on complex values"),
    **{name: (dense, why) for name, dense, why in (
        ("dbrx", "llama", "its experts are its own code (DbrxExperts), not transformers' experts interface: missing a static-shape lowering for them"),
        ("doge", "llama", "its cross-domain MoE is its own code, not transformers' experts interface: missing a static-shape lowering for it"),
        ("jetmoe", "llama", "mixture of attention heads and experts in its own code, not transformers' experts interface: missing a "
         "static-shape lowering for them"),
        ("beam", "llama", "its experts are its own code, not transformers' experts interface (exports, 0 per-expert Ifs), and its "
         "sandwich norms (13 RMSNormalization on 2 layers) and rotary on sliding layers only (2 of 4) have no entry"),
    )},
    # export and match PyTorch on the tiny config; what their entry must say is missing (the counts measured)
    **{name: (dense, "exports and matches PyTorch on a tiny config (experts through the interface); missing: an entry for " + why)
       for name, dense, why in (
        ("afmoe", "llama", "its sandwich and q/k norms (13 RMSNormalization on 2 layers) and rotary on sliding layers only (2 of 4)"),
        ("ergo", "llama", "its extra norms (15 RMSNormalization on 2 layers) and rotary on sliding layers only (2 of 4)"),
        ("kolibri1", "qwen3", "its sandwich and q/k norms (13 RMSNormalization on 2 layers) and rotary on sliding layers only (2 of 4)"),
        ("exaone_moe", "exaone4", "exaone4's q/k norms and NoPE full-attention layers (9 RMSNormalization, rotary 2 of 4)"),
        ("cohere2_moe", "cohere2", "cohere2's parallel LayerNorm blocks and rotary on sliding layers only (3 LayerNormalization, rotary 2 of 4)"),
    )},
    **{name: (dense, "exports and matches PyTorch, but its attention is not fused to Attention (0 nodes): its sliding-window "
              "attention is not matched by the fusion rules") for name, dense in (("flint", "qwen3"), ("granitemoe_swa", "granitemoe"))},
    **{name: ("qwen3_moe", "transformers' config validator (validate_architecture) refuses any layout but the released one, so no "
              "tiny model can be built to test it") for name in ("dots3_note", "dots3_note_text", "kolibri1_1")},
    # ---- state-space / linear-attention hybrids: the layer kind that is missing (families/hybrid.py has conv,
    #      Mamba-2 and gated-DeltaNet states) --------------------------------------------------------------------
    **{name: ("mamba2", "Mamba-1 selective scan (transformers' slow path loops over tokens; torch.export: module is not installed as "
              "a submodule): missing an exportable Mamba-1 scan beside recurrences.py's Mamba-2 one") for name in ("mamba", "falcon_mamba")},
    "jamba": ("granitemoehybrid", "Mamba-1 layers (selective scan looped over tokens) beside attention and experts: missing an exportable "
              "Mamba-1 scan"),
    "minimax": ("qwen3_next", "lightning-attention layers keep their own cache class (MiniMaxCache), not transformers' layer cache: "
                "missing that state layout"),
    "bailing_hybrid": ("qwen3_next", "linear-attention layers whose recurrent state the flat cache does not provide (Cannot get recurrent "
                       "state for ... DynamicLayer): missing its linear-attention state kind in the hybrid layout"),
    "kimi_linear": ("qwen3_next", "Kimi Delta Attention (KDA) layers: missing its recurrent state kind (per-channel decay) in the hybrid layout"),
    "olmo_hybrid": ("qwen3_next", "gated DeltaNet with separate q/k/v short convolutions: missing its conv-state layout (qwen3_5's has one conv)"),
    "lara_mini": ("qwen3_next", "gated DeltaNet beside sliding and full attention: missing its entry's state shapes for its config"),
    "qwen4_exp": ("qwen3_next", "gated DeltaNet plus `indexed_attention` layers (token-selection attention): missing that layer kind"),
    "qwen4_exp_text": ("qwen3_next", "gated DeltaNet plus `indexed_attention` layers (token-selection attention): missing that layer kind"),
    "lfm2_moe": ("lfm2", "lfm2's conv + attention with experts, but its config has no `layer_types` (the layout comes from "
                 "full_attn_idxs): missing the entry that reads that layout"),
    "lfm3": ("lfm2", "lfm2-style conv layers with sandwich norms and sliding layers: missing its entry (conv state, norm counts)"),
    **{name: ("lfm2", "`linear_attention` and `hybrid` layers with states of their own: missing those layer kinds")
       for name in ("inkling_text", "inkling2_text", "inkling2_loop_text")},
    "dory": ("llama", "a past-reader cache layer (DoryPastReader) beside attention: missing that layer kind"),
    "zaya": ("lfm2", "`conv` and `hybrid` (CCA attention) layers with their own states and experts of its own code: missing those layer kinds"),
    **{name: ("falcon_h1", "one shared transformer block reused by `hybrid` layers (cache per use, not per layer): missing that layer "
              "kind; its config validator also refuses tiny layer layouts") for name in ("zamba", "zamba2")},
    "recurrent_gemma": ("gemma", "RG-LRU recurrence with its own cache (no transformers Cache is returned): missing that state kind"),
    "rwkv": ("gpt_neox", "RWKV's WKV recurrence with its own state tuple, not transformers' Cache: missing that state kind"),
    "xlstm": ("mamba2", "mLSTM / sLSTM recurrences with their own cache class (xLSTMCache): missing those state kinds"),
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
    "biogpt": ("opt", _UNTESTED_MHA.format("LayerNorm, learned positions")),
    "blt": ("llama", "byte latent transformer (local encoder, patcher, global model): torch.export does not finish"),
    "cohere_compass_text": ("cohere2", "per-layer-type rope parameters that cohere2's entry does not read: missing its entry"),
    "cpmant": ("llama", "CPM-Ant: segment/position buckets and its own cache tuples, not transformers' Cache"),
    "ctrl": ("gpt2", _UNTESTED_MHA.format("LayerNorm, sinusoidal positions")),
    "diffllama": ("llama", "differential attention (two softmax maps subtracted per head): two Attention nodes a layer, no single standard op"),
    "gemma3n_text": ("gemma3_text", "per-layer inputs, AltUp and KV sharing across layers: missing a cache layout for shared KV layers"),
    "gemma4_unified_text": ("gemma4_text", "per-layer head sizes like gemma4_text: missing its entry (per_layer_cache_dims)"),
    "gpt-sw3": ("gpt2", _UNTESTED_MHA.format("GPT2LMHeadModel under another model type")),
    "gpt_neo": ("gpt2", "local (windowed) and global attention layers without scaling: missing its entry (learned positions, window)"),
    "gpt_neox_japanese": ("gpt_neox", "its eager attention is not fused to Attention (exports, 0 Attention nodes)"),
    "granite_swa": ("granite", "exports, but its attention is not fused to Attention (0 nodes)"),
    "hrm_text": ("llama", "hierarchical recurrent loops over the same layers: the cache layout is not one entry per layer"),
    "modernbert-decoder": ("olmo", _UNTESTED_MHA.format("LayerNorm, alternating local/global layers")),
    "mpt": ("bloom", "torch.export fails on its ALiBi mask construction (inconsistent symbolic shapes)"),
    "nanochat": ("llama", "exports, but its parameter-free RMSNorm and rotary are not fused (0 nodes)"),
    "openai-gpt": ("gpt2", "GPT-1 has no KV cache in transformers (no text-generation-with-past)"),
    "persimmon": ("stablelm", _UNTESTED_MHA.format("partial rotary, q/k LayerNorms")),
    "xglm": ("opt", "exports, but its attention is not fused to Attention (0 nodes)"),
    "youtu": ("minicpm3", "MLA-style attention: the default cache layout does not fit; missing an entry with its cache layout"),
}
