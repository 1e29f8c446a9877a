"""`genai_config.json`: what onnxruntime-genai needs to run the exported graph as it is.

The graph keeps optimum's I/O names and a concatenating KV cache (Attention-23 appends the new
keys to `past_key_values.*` and returns the whole cache as `present.*`), so the config names those
templates and turns `past_present_share_buffer` off; the sliding windows of mistral/gemma live in
the graph's mask, so no `sliding_window` block is written either.
"""

from __future__ import annotations

import re
from typing import Any

from .onnx_files import OnnxModelFiles

__all__ = ["make_genai_config", "GENAI_MODEL_TYPES", "GenaiConfigError"]

# Model types onnxruntime-genai 0.18 runs with its plain decoder-only pipeline on our I/O (checked
# token for token on each tiny architecture); anything else is declared as `llama`, which for a
# graph with standard I/O differs only in the name. Not `gpt2`: 0.18 maps it to its legacy GPT-2
# class, which wants a combined `past_%d` tensor and fails with "Model input was not found".
GENAI_MODEL_TYPES = frozenset(
    {"gemma", "gemma2", "gemma3_text", "granite", "llama", "mistral", "phi3", "qwen2", "qwen3", "smollm3"}
)

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_STATE = re.compile(r"^past_(conv|ssm|recurrent)\.(\d+)$")
_KNOWN_INPUTS = ("input_ids", "attention_mask", "position_ids")


class GenaiConfigError(ValueError):
    """The graph cannot be described to onnxruntime-genai (e.g. it has no KV-cache inputs)."""


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) and value else value


def make_genai_config(
    onnx_model: OnnxModelFiles,
    filename: str,
    config: dict[str, Any],
    generation_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the `genai_config.json` dict for `onnx_model`, stored at `filename` relative to the repo root.

    Raises `GenaiConfigError` for a graph exported without the KV cache (`--task text-generation`):
    onnxruntime-genai's decoder loop needs `past_key_values.*` inputs; and for a graph with inputs
    it cannot feed (the static cache's `write_indices`).
    """
    generation_config = generation_config or {}
    layers = sorted({int(m.group(1)) for name in onnx_model.graph_inputs if (m := _PAST.match(name))})
    if not layers:
        raise GenaiConfigError(
            f"{onnx_model.name} has no past_key_values inputs (exported without the KV cache), which onnxruntime-genai needs"
        )
    states = {m.group(1) for name in onnx_model.graph_inputs if (m := _STATE.match(name))}
    hybrid = _hybrid_decoder(states, config, onnx_model.name)
    unknown = [n for n in onnx_model.graph_inputs if n not in _KNOWN_INPUTS and not _PAST.match(n) and not _STATE.match(n)]
    if unknown:
        # e.g. the static cache's `write_indices`: onnxruntime-genai has no way to feed it.
        raise GenaiConfigError(f"{onnx_model.name} has inputs onnxruntime-genai cannot feed ({', '.join(unknown)})")
    text_config = config.get("text_config", config)
    heads = text_config.get("num_attention_heads") or text_config.get("n_head")
    hidden = text_config.get("hidden_size") or text_config.get("n_embd")
    kv_heads = text_config.get("num_key_value_heads") or heads
    head_size = text_config.get("head_dim") or hidden // heads
    context = text_config.get("max_position_embeddings") or text_config.get("n_positions") or 2048
    eos = generation_config.get("eos_token_id", config.get("eos_token_id"))
    bos = generation_config.get("bos_token_id", config.get("bos_token_id"))
    pad = generation_config.get("pad_token_id", config.get("pad_token_id"))
    if pad is None:
        pad = _first(eos)
    model_type = config.get("model_type", "llama")

    inputs = {"input_ids": "input_ids"}
    for name in ("attention_mask", "position_ids"):
        if name in onnx_model.graph_inputs:
            inputs[name] = name
    inputs["past_key_names"] = "past_key_values.%d.key"
    inputs["past_value_names"] = "past_key_values.%d.value"
    outputs = {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}

    def search_value(key: str, default: Any) -> Any:
        value = generation_config.get(key)
        return default if value is None else value

    genai_config = {
        "model": {
            "bos_token_id": bos,
            "context_length": int(context),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": int(head_size),
                "hidden_size": int(hidden),
                "inputs": inputs,
                "outputs": outputs,
                "num_attention_heads": int(heads),
                "num_hidden_layers": len(hybrid.get("layer_types", layers)),
                "num_key_value_heads": int(kv_heads),
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": model_type if model_type in GENAI_MODEL_TYPES or hybrid else "llama",
            "vocab_size": int(text_config.get("vocab_size")),
        },
        "search": {
            "diversity_penalty": search_value("diversity_penalty", 0.0),
            "do_sample": bool(search_value("do_sample", False)),
            "early_stopping": True,
            "length_penalty": search_value("length_penalty", 1.0),
            "max_length": int(context),
            "min_length": 0,
            "no_repeat_ngram_size": search_value("no_repeat_ngram_size", 0),
            "num_beams": search_value("num_beams", 1),
            "num_return_sequences": search_value("num_return_sequences", 1),
            # The graph concatenates past and new keys itself; a shared, preallocated buffer would
            # be read as a past of max_length.
            "past_present_share_buffer": False,
            "repetition_penalty": search_value("repetition_penalty", 1.0),
            "temperature": search_value("temperature", 1.0),
            "top_k": search_value("top_k", 50),
            "top_p": search_value("top_p", 1.0),
        },
    }
    if hybrid:
        genai_config["model"]["decoder"].update(hybrid)
        inputs["past_conv_names"] = "past_conv.%d"
        outputs["present_conv_names"] = "present_conv.%d"
    # onnxruntime-genai's parser rejects null ("Expected a number"); an absent token id is fine.
    for key in ("bos_token_id", "pad_token_id"):
        if genai_config["model"][key] is None:
            del genai_config["model"][key]
    return genai_config


def _hybrid_decoder(states: set[str], config: dict[str, Any], name: str) -> dict[str, Any]:
    """The decoder keys onnxruntime-genai 0.18 needs for a hybrid graph ({} for a plain one).

    0.18 runs LFM2 (conv states beside attention, its `LFM2Cache`), with our names given as the
    `past_conv_names` / `present_conv_names` templates. It has no Mamba-2 (ssm) state, and its
    Qwen3.5 takes 3-D MRoPE position ids ([3, batch, sequence]) where our graph, like
    transformers' text model, takes [batch, sequence]: both are refused here."""
    if not states:
        return {}
    model_type = config.get("model_type")
    if states != {"conv"} or model_type not in _CONV_ONLY_TYPES:
        raise GenaiConfigError(
            f"{name} keeps {'/'.join(sorted(states))} states of `{model_type}`, which onnxruntime-genai 0.18 cannot "
            "feed with this graph's inputs (it runs conv states for lfm2 only)"
        )
    layout = config.get("optimum_onnx23_cache_layout", {}).get("layers", [])
    widths = {t["shape"][-1] for layer in layout for kind, t in layer.get("tensors", {}).items() if kind == "conv"}
    width = widths.pop() if len(widths) == 1 else config["conv_L_cache"] - 1
    return {"layer_types": list(config["layer_types"]), "conv_cache_size": int(width)}


_CONV_ONLY_TYPES = frozenset({"lfm2"})
