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
_MULTIMODAL = "multimodal model whose text decoder AutoModelForCausalLM does not load alone: missing its `decoder_config` / `key_mapping` entry"

_GEMMA3N = (
    "AltUp, LAuReL and per-layer inputs export and the export's validation passes, but kv-sharing layers read the source layer's "
    "cache in a shape the trace fixes to the query length (decode: Reshape {3,2,2,34,16} -> {3,4,1,16} fails); missing: a cache "
    "layout for shared KV layers (their keys and values read from the source layer's present)"
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
    "deepseek_v2": ("deepseek_v3", "multi-head latent attention whose rotary multiplies complex numbers: with deepseek_v3's latent "
                    "cache (`mla_cache_dims`) torch.export fails: the ONNX translation has no function for aten.unsqueeze on complex "
                    "values (as llama4's); missing: a real-valued form of its rotary"),
    "axk2": ("deepseek_v3", "`indexed_attention` layers (a learned indexer selects top-k tokens per query) beside MLA's latent cache: "
             "no standard op attends over a per-query token subset; missing: that layer kind"),
    **{name: ("deepseek_v3", "DeepSeek sparse attention: an indexer selects the top-k cached tokens per query, which no standard "
              "op attends over (missing: that layer kind); its cache is MLA's latent (deepseek_v3's `mla_cache_dims`)")
       for name in ("deepseek_v32", "glm_moe_dsa")},
    "deepseek_v4": ("deepseek_v3", "compressed-attention layers of its own beside MLA's latent cache: missing that layer kind"),
    "axk1": ("deepseek_v3", "torch.export fails in AXK1Attention's rotary (`q1 * cos - q2 * sin`: the rope part of the head and the rotary "
             "table disagree, 4 vs 8); missing: a rotary table sized to its split rope head"),
    "longcat_flash": ("deepseek_v3", "torch.export fails in LongcatFlashMLA's rotary (rope part 4 vs table 8) and its cache is MLA's "
                      "latent; missing: a rotary table sized to its split rope head, and its two attention blocks per layer (a layer kind)"),
    "hy_v4": ("hunyuan_v1_dense", "its attention caches fewer kv heads than `num_key_value_heads` (cache concat fails in torch.export): "
              "missing: a cache layout with its cached head count"),
    "mimo_v2_flash": ("qwen2", "sliding and full layers with different kv head counts (cache concat fails in torch.export on layer 1): "
                      "missing a per-layer cache layout (`kv_layout`)"),
    "llama4": ("llama", "its rotary multiplies complex numbers: the ONNX translation has no function for aten.unsqueeze on complex values"),
    "llama4_text": ("llama", "its rotary multiplies complex numbers: the ONNX translation has no function for aten.unsqueeze on complex values"),
    **{name: (dense, why) for name, dense, why in (
        ("dbrx", "llama", "its experts are its own code (DbrxExperts), not transformers' experts interface: missing a static-shape lowering for them"),
        ("doge", "llama", "its cross-domain MoE is its own code, not transformers' experts interface: missing a static-shape lowering for it"),
        ("jetmoe", "llama", "mixture of attention heads and experts in its own code, not transformers' experts interface: missing a "
         "static-shape lowering for them"),
        ("beam", "afmoe", "its experts are its own code, not transformers' experts interface (exports, 0 per-expert Ifs): missing a "
         "static-shape lowering for them (its sandwich norms and rotary on sliding layers only are afmoe's blocks)"),
    )},
    "ergo": ("afmoe", "exports with afmoe's blocks (sandwich and q/k norms, rotary on sliding layers only; 15 RMSNormalization on 2 "
             "layers) and passes the export's validation, but a one-token decode past its sliding window (7 positions, window 6) "
             "differs from transformers (max |diff| 2.8 on the tiny config): its windowed attention is not the mask the graph applies"),
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
    "lara_mini": ("qwen3_next", "gated DeltaNet beside sliding and full attention: missing: the conv and recurrent state shapes of its DeltaNet sizes in the hybrid layout"),
    "qwen4_exp": ("qwen3_next", "gated DeltaNet plus `indexed_attention` layers (token-selection attention): missing that layer kind"),
    "qwen4_exp_text": ("qwen3_next", "gated DeltaNet plus `indexed_attention` layers (token-selection attention): missing that layer kind"),
    "lfm2_moe": ("lfm2", "lfm2's conv + attention with experts, but its config has no `layer_types` (the layout comes from "
                 "full_attn_idxs): missing: a layout reader for full_attn_idxs"),
    "lfm3": ("lfm2", "lfm2-style conv layers with sandwich norms and sliding layers: missing: its conv-state shape and sandwich-norm counts"),
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
    "emu3": ("llama", "multimodal (a VQ image tokenizer beside the decoder): its text config `emu3_text_model` has no "
             "AutoModelForCausalLM class, so the decoder cannot be loaded alone; missing: a loader for its text model"),
    "git": ("opt", "its decoder attends over the image features prepended to the tokens in every layer, and its config has no "
            "text config: no separable text decoder; missing: a cache layout with the image prefix"),
    "phi4_multimodal": ("phi3", "its config has no text config: the decoder is built inside Phi4MultimodalModel with the image "
                        "and audio embedders and their LoRA adapters; missing: a text-only load path"),
    "gemma3n": ("gemma4", "its text decoder is gemma3n_text's (" + _GEMMA3N + "); besides, the full checkpoint's vision tower is a "
                "timm model, so a tiny Gemma3nForConditionalGeneration cannot be built where timm is not installed"),
    "mllama": ("gemma4", "its text decoder (MllamaForCausalLM, which AutoModelForCausalLM does not map from the text config) has "
               "cross-attention layers whose K/V come from the image, not the tokens: text-only generation skips them only while "
               "their cache is empty, so per-token K/V I/O makes them attend (onnxruntime: Attention with kv_sequence_length 0); "
               "missing: a cache layout whose cross-attention layers hold no per-token cache"),
    "gemma4_assistant": ("gemma4_text", "draft model reading the target model's shared KV states (speculative decoding)"),
    "gemma4_unified_assistant": ("gemma4_text", "draft model reading the target model's shared KV states (speculative decoding)"),
    "moshi": ("llama", "speech-text model with a depth decoder over audio codebooks"),
    # ---- dense decoders ---------------------------------------------------------------------
    "blt": ("llama", "byte latent transformer (local encoder, patcher, global model): torch.export does not finish"),
    "cohere_compass_text": ("cohere2", "rope parameters per layer type (a rotary table each for sliding and full layers) in an attention "
                            "that cohere2's rotary handling does not cover; missing: that per-layer-type rotary kind"),
    "cpmant": ("llama", "CPM-Ant: segment/position buckets and its own cache tuples, not transformers' Cache"),
    "diffllama": ("llama", "differential attention (two softmax maps subtracted per head): two Attention nodes a layer, no single standard op"),
    "gemma3n_text": ("gemma3_text", _GEMMA3N),
    "gpt_neo": ("gpt2", "exports and matches PyTorch (max |diff| 1.6e-6 on a tiny config), but its attention is not fused to "
                "Attention (0 nodes): GPT-Neo's unscaled scores (no 1/sqrt(head_dim)) are not matched by the fusion rules; "
                "missing: that fusion rule"),
    "gpt_neox_japanese": ("gpt_neox", "its eager attention is not fused to Attention (exports, 0 Attention nodes)"),
    "granite_swa": ("granite", "exports, but its attention is not fused to Attention (0 nodes)"),
    "hrm_text": ("llama", "hierarchical recurrent loops over the same layers: missing: a cache layout where one layer runs (and caches) several times a step"),
    "mpt": ("bloom", "torch.export fails on its ALiBi mask construction (inconsistent symbolic shapes)"),
    "nanochat": ("llama", "exports, but its parameter-free RMSNorm and rotary are not fused (0 nodes)"),
    "openai-gpt": ("gpt2", "GPT-1 has no KV cache in transformers (no text-generation-with-past)"),
    "xglm": ("opt", "exports, but its attention is not fused to Attention (0 nodes)"),
}
