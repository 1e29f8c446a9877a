"""Declarative export configs for decoder LLMs: one small entry per architecture.

An entry says what the exported graph looks like for a `model_type`; everything else (I/O names,
dynamic axes, dummy inputs) is shared by all decoders and derived from the entry and the model's
`PretrainedConfig`. The schema, field by field:

- Normalization: the op it fuses to (`norm_op`: `RMSNormalization` or `LayerNormalization`, bias
  or not), how many a layer has (`norms_per_layer`; 1 where attention and MLP read one norm in
  parallel), `qk_norm` (two more a layer), `extra_norms` (outside the layers besides the final one:
  bloom's embedding norm), or `norm_count` where no formula fits (per-head norms).
- Positions: `positions` is `rotary`, `learned` (an embedding table) or `alibi` (a per-head linear
  bias on the scores, which reaches `Attention` as part of its float mask); with rotary,
  `rotary_layers` counts the layers that apply it (NoPE layers do not), `rotary_dim` the rotated
  part of each head when it is partial (`RotaryEmbedding(rotary_embedding_dim=...)`), and
  `rotary_interleaved` pairs (x0, x1), (x2, x3), ... instead of the two halves (`interleaved=1`).
- Block: `parallel_block` (attention and MLP add to the same residual; informational).
- KV cache: `cache_dims(config)` gives (kv heads, key size, value size) of every layer; the
  defaults read `num_key_value_heads` and `head_dim`; `kv_heads` and `value_head_dim` override
  them, `kv_layout` replaces the whole list (MLA caches a compressed latent: `mla_cache_dims`).
- Multimodal checkpoints: `decoder_config` names the config attribute of the text decoder to
  export, `key_mapping` renames the checkpoint's weights to the text model's names.
- `attn_implementation`: transformers' attention code to trace where the default does not export.
- `unfused`: per standard op, why the family has no (or fewer) such nodes where a reader would
  expect one (ALiBi has no RotaryEmbedding; MLA's absorbed form has no standard op), written into
  the export report beside the expected counts.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import UnsupportedArchitectureError

__all__ = [
    "DecoderExportConfig",
    "TASKS",
    "EXPORT_CONFIGS",
    "POSITIONS",
    "get_export_config",
    "mla_cache_dims",
    "per_layer_cache_dims",
    "nearest_supported",
    "register_export_config",
]

# optimum's task names; "-with-past" adds the KV cache as graph I/O.
TASKS = ("text-generation", "text-generation-with-past")
POSITIONS = ("rotary", "learned", "alibi")

# Sample sizes used to trace: all distinct and > 1 so torch.export keeps them symbolic.
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 5, 3


def _all_layers(config) -> int:
    return config.num_hidden_layers


def _layers_of_type(layer_type: str) -> Callable[[Any], int]:
    """Rotary on the layers of one `layer_types` kind only (cohere2, exaone4: full layers are NoPE)."""

    def count(config) -> int:
        return sum(kind == layer_type for kind in config.layer_types[: config.num_hidden_layers])

    return count


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _partial_rotary(config) -> int:
    """`partial_rotary_factor` of transformers' rope parameters, as a number of rotated channels."""
    factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(_head_dim(config) * factor)


def _resolve(value, config):
    """A field given as a value or as a function of the model's config."""
    return value(config) if callable(value) else value


def per_layer_cache_dims(config) -> list[tuple[int, int, int]]:
    """Layers of different shapes (gemma4: full-attention layers have `global_head_dim` and their own
    kv head count), read from transformers' `per_layer_config`."""
    layers = [config.per_layer_config[i] for i in range(config.num_hidden_layers)]
    return [(layer.num_key_value_heads, layer.head_dim, layer.head_dim) for layer in layers]


def _gemma4_norms(config) -> int:
    """4 block norms and a q norm per layer; k and v norms where the layer computes its own kv
    (not on kv-sharing layers); per-layer-input embeddings add a norm per layer and one overall."""
    layers = config.num_hidden_layers
    own_kv = sum(mode != "reuse" for mode in config.kv_sharing_modes[:layers])
    per_layer_inputs = layers + 1 if config.hidden_size_per_layer_input else 0
    return layers * 5 + 2 * own_kv + per_layer_inputs + 1


def mla_cache_dims(config) -> list[tuple[int, int, int]]:
    """Multi-head latent attention (deepseek_v2/v3, minicpm3): transformers caches the compressed
    latent, one "head" per layer: the normalized `kv_lora_rank` latent as the key and the shared
    rotary key (`qk_rope_head_dim`) as the value; every step expands them with `kv_b_proj`."""
    return [(1, config.kv_lora_rank, config.qk_rope_head_dim)] * config.num_hidden_layers


@dataclass(frozen=True)
class DecoderExportConfig:
    """How one decoder architecture maps to the exported ONNX graph (see the module docstring)."""

    model_type: str
    # Fields typed `X | Callable` take a value or a function of the model's config.
    norm_op: str = "RMSNormalization"
    norms_per_layer: int | Callable[[Any], int] = 2
    qk_norm: bool | Callable[[Any], bool] = False
    extra_norms: int = 0
    norm_count: Callable[[Any], int] | None = None
    positions: str | Callable[[Any], str] = "rotary"
    rotary_layers: Callable[[Any], int] | None = _all_layers
    rotary_dim: Callable[[Any], int] | None = None
    rotary_interleaved: bool = False
    parallel_block: bool | Callable[[Any], bool] = False
    # Config attributes; the sliding window is applied through the mask, the cache stays full-length.
    sliding_window_attr: str | None = None
    softcap_attr: str | None = None
    # KV-cache layout overrides: value head size, or every layer's (heads, key size, value size).
    kv_heads: Callable[[Any], int] | None = None
    value_head_dim: Callable[[Any], int] | None = None
    kv_layout: Callable[[Any], list[tuple[int, int, int]]] | None = None
    decoder_config: str | None = None
    key_mapping: dict[str, str] | None = None
    # transformers' attention implementation to trace, where the default one does not export.
    attn_implementation: str | None = None
    # Per standard op, why the family has none (or fewer) where a reader would expect one.
    unfused: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not callable(self.positions) and self.positions not in POSITIONS:
            raise ValueError(f"{self.model_type}: positions must be one of {POSITIONS}, got {self.positions!r}")

    def position_kind(self, config) -> str:
        return _resolve(self.positions, config)

    # ---- the decoder to export ----------------------------------------------------------------
    def text_config(self, config):
        """The config of the decoder that is exported: `config` itself, or the text decoder's of a
        multimodal checkpoint (`decoder_config`)."""
        return getattr(config, self.decoder_config) if self.decoder_config else config

    def load_kwargs(self) -> dict[str, Any]:
        """What `from_pretrained` takes besides the checkpoint (weight renames, attention implementation)."""
        kwargs = {"key_mapping": self.key_mapping, "attn_implementation": self.attn_implementation}
        return {name: value for name, value in kwargs.items() if value is not None}

    # ---- KV-cache layout -------------------------------------------------------------------
    def num_layers(self, config) -> int:
        return config.num_hidden_layers

    def num_kv_heads(self, config) -> int:
        if self.kv_heads is not None:
            return self.kv_heads(config)
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads

    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def cache_dims(self, config) -> list[tuple[int, int, int]]:
        """(kv heads, key head size, value head size) of each layer's cache."""
        if self.kv_layout is not None:
            return list(self.kv_layout(config))
        heads, key = self.num_kv_heads(config), self.head_dim(config)
        value = self.value_head_dim(config) if self.value_head_dim else key
        return [(heads, key, value)] * self.num_layers(config)

    def cache_shapes(self, config, batch_size, length) -> list[tuple]:
        """`[batch, heads, length, size]` of every past tensor, in I/O order (key, value per layer)."""
        return [(batch_size, h, length, d) for h, k, v in self.cache_dims(config) for d in (k, v)]

    # ---- tracing ---------------------------------------------------------------------------
    def tracing(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Entered around torch.export: torch-side patches a family needs to trace (MoE experts)."""
        return contextlib.nullcontext()

    # ---- graph I/O -------------------------------------------------------------------------
    def input_names(self, config, with_past: bool) -> list[str]:
        names = ["input_ids", "attention_mask", "position_ids"]
        if with_past:
            names += [f"past_key_values.{i}.{kv}" for i in range(self.num_layers(config)) for kv in ("key", "value")]
        return names

    def output_names(self, config, with_past: bool) -> list[str]:
        names = ["logits"]
        if with_past:
            names += [f"present.{i}.{kv}" for i in range(self.num_layers(config)) for kv in ("key", "value")]
        return names

    def dynamic_shapes(self, config, with_past: bool) -> tuple:
        """torch.export `Dim`s in the wrapper's argument order (past tensors are one *args tuple)."""
        from torch.export import Dim

        batch = Dim("batch_size")
        seq = Dim("sequence_length")
        total = Dim("total_sequence_length")
        shapes: list = [{0: batch, 1: seq}, {0: batch, 1: total if with_past else seq}, {0: batch, 1: seq}]
        if with_past:
            past = Dim("past_sequence_length", min=0)
            shapes.append(tuple({0: batch, 2: past} for _ in range(2 * self.num_layers(config))))
        return tuple(shapes)

    def dummy_inputs(
        self,
        config,
        with_past: bool,
        batch_size: int = _TRACE_BATCH,
        sequence_length: int = _TRACE_SEQ,
        past_length: int = _TRACE_PAST,
        left_padding: int = 0,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Inputs in the wrapper's argument order; row 0 gets `left_padding` masked positions."""
        past_length = past_length if with_past else 0
        total = past_length + sequence_length
        input_ids = torch.randint(0, config.vocab_size, (batch_size, sequence_length), generator=generator)
        attention_mask = torch.ones(batch_size, total, dtype=torch.int64)
        attention_mask[0, : min(left_padding, total - 1)] = 0
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_length:]
        inputs = [input_ids, attention_mask, position_ids]
        if with_past:
            inputs += [torch.randn(shape, generator=generator, dtype=dtype) for shape in self.cache_shapes(config, batch_size, past_length)]
        return tuple(inputs)

    # ---- the module torch.export traces -------------------------------------------------------
    # Whether layer_replication may trace 4 layers and clone the last for the others.
    replicable = True

    def make_wrapper(self, model, config, options):
        """The flat-tensor view of `model` for these export `options` (pipeline.ExportOptions)."""
        from . import static_cache
        from .wrapper import DecoderWrapper

        if options.static_len is None:
            return DecoderWrapper(model, self.num_layers(config), options.with_past, options.logits_to_keep)
        return static_cache.StaticCacheWrapper(model, self.num_layers(config), options.logits_to_keep)

    def static_kv_writes(self, config) -> int:
        """KV writes the static-cache lowering must find (a key and a value per attention layer)."""
        return 2 * self.num_layers(config)

    # ---- what the fused graph must contain -------------------------------------------------
    def expected_fusions(self, config) -> dict[str, int]:
        layers = self.num_layers(config)
        if self.norm_count is not None:
            norms = self.norm_count(config)
        else:
            per_layer = _resolve(self.norms_per_layer, config) + (2 if _resolve(self.qk_norm, config) else 0)
            norms = layers * per_layer + 1 + self.extra_norms
        rotary = self.rotary_layers is not None and self.position_kind(config) == "rotary"
        return {"Attention": layers, self.norm_op: norms, "RotaryEmbedding": 2 * self.rotary_layers(config) if rotary else 0}

    def expected_rotary(self, config) -> dict[str, int]:
        """The attributes every RotaryEmbedding node must carry (0 = full head, not interleaved)."""
        return {"rotary_embedding_dim": self.rotary_dim(config) if self.rotary_dim else 0, "interleaved": int(self.rotary_interleaved)}

    def unfused_ops(self, config) -> dict[str, str]:
        """Per standard op, why the graph has none (or fewer than a reader would expect)."""
        notes = dict(self.unfused)
        positions = self.position_kind(config)
        if positions == "learned":
            notes.setdefault("RotaryEmbedding", "learned absolute positions (an embedding table added to the input): no rotary to fuse")
        elif positions == "alibi":
            notes.setdefault(
                "RotaryEmbedding",
                "ALiBi positions: a per-head linear bias on the attention scores, passed to Attention inside its float "
                "attn_mask (no standard op computes ALiBi itself)",
            )
        elif self.rotary_layers is None:
            notes.setdefault("RotaryEmbedding", "no positional encoding in the layers")
        elif self.rotary_layers(config) < self.num_layers(config):
            notes.setdefault("RotaryEmbedding", "layers without rotary positions (NoPE) have none")
        return notes


EXPORT_CONFIGS: dict[str, DecoderExportConfig] = {}


def register_export_config(entry: DecoderExportConfig) -> DecoderExportConfig:
    EXPORT_CONFIGS[entry.model_type] = entry
    return entry


def nearest_supported(model_type: str) -> str:
    """The supported model type closest to `model_type` by architecture (exporters.unsupported),
    else by name (Hub repositories' own model types, e.g. under --trust-remote-code)."""
    from .unsupported import NOT_SUPPORTED

    if model_type in NOT_SUPPORTED and NOT_SUPPORTED[model_type][0] in EXPORT_CONFIGS:
        return NOT_SUPPORTED[model_type][0]
    close = difflib.get_close_matches(model_type, sorted(EXPORT_CONFIGS), n=1, cutoff=0.0)
    return close[0] if close else "llama"


def get_export_config(model_type: str) -> DecoderExportConfig:
    from .unsupported import NOT_SUPPORTED

    try:
        return EXPORT_CONFIGS[model_type]
    except KeyError:
        reason = f": {NOT_SUPPORTED[model_type][1]}" if model_type in NOT_SUPPORTED else ""
        raise UnsupportedArchitectureError(
            f"Architecture `{model_type}` is not supported by the dynamo ONNX exporter{reason}. The nearest supported "
            f"one is `{nearest_supported(model_type)}`; all: {', '.join(sorted(EXPORT_CONFIGS))}."
        ) from None


for _entry in (
    DecoderExportConfig("llama"),
    DecoderExportConfig("mistral", sliding_window_attr="sliding_window"),
    DecoderExportConfig("qwen2", sliding_window_attr="sliding_window"),
    DecoderExportConfig("qwen3", qk_norm=True, sliding_window_attr="sliding_window"),
    DecoderExportConfig("phi3", sliding_window_attr="sliding_window", notes="fused qkv and gate_up projections"),
    DecoderExportConfig(
        "gemma2",
        norms_per_layer=4,
        sliding_window_attr="sliding_window",
        softcap_attr="attn_logit_softcapping",
        notes="attention softcap fused by optimum_onnx23's softcap_attention rule",
    ),
    DecoderExportConfig("gemma3_text", norms_per_layer=4, qk_norm=True, sliding_window_attr="sliding_window"),
    DecoderExportConfig("gpt2", norm_op="LayerNormalization", positions="learned", notes="learned absolute positions"),
    DecoderExportConfig("granite"),
    DecoderExportConfig("olmo2", qk_norm=True, notes="post-norms only; full-width q/k norms"),
    DecoderExportConfig(
        "smollm3",
        # no_rope_layers[i] == 1 means layer i *uses* rope (transformers' naming).
        rotary_layers=lambda config: sum(config.no_rope_layers[: config.num_hidden_layers]),
        sliding_window_attr="sliding_window",
    ),
    # ---- dense families added for issue 10 (alphabetical) ------------------------------------
    DecoderExportConfig("apertus", qk_norm=True, notes="xIELU activation; per-head q/k norms"),
    DecoderExportConfig("arcee", notes="ReLU^2 MLP without gate"),
    DecoderExportConfig(
        "bloom", norm_op="LayerNormalization", positions="alibi", extra_norms=1,
        notes="ALiBi positions; LayerNorm after the word embeddings",
    ),
    DecoderExportConfig(
        "codegen", norm_op="LayerNormalization", norms_per_layer=1, rotary_dim=lambda c: c.rotary_dim or _head_dim(c),
        rotary_interleaved=True, parallel_block=True, notes="fused qkv interleaved over 4 model-parallel shards",
    ),
    DecoderExportConfig(
        "cohere", norm_op="LayerNormalization", norms_per_layer=1, qk_norm=lambda c: c.use_qk_norm, rotary_interleaved=True,
        parallel_block=True, notes="bias-free LayerNorm; logits scaled by logit_scale",
    ),
    DecoderExportConfig(
        "cohere2", norm_op="LayerNormalization", norms_per_layer=1, rotary_layers=_layers_of_type("sliding_attention"),
        rotary_interleaved=True, parallel_block=True, sliding_window_attr="sliding_window",
        notes="rotary on sliding-window layers only; full-attention layers are NoPE",
    ),
    DecoderExportConfig("ernie4_5", rotary_interleaved=True),
    DecoderExportConfig(
        "exaone4", qk_norm=True, sliding_window_attr="sliding_window",
        rotary_layers=lambda c: _all_layers(c) if c.sliding_window is None else _layers_of_type("sliding_attention")(c),
        notes="post-norms; rotary on sliding-window layers only when the model has them",
    ),
    DecoderExportConfig(
        "falcon", norm_op="LayerNormalization", positions=lambda c: "alibi" if c.alibi else "rotary",
        norms_per_layer=lambda c: (c.num_ln_in_parallel_attn or 2) if c.new_decoder_architecture else (1 if c.parallel_attn else 2),
        parallel_block=lambda c: c.parallel_attn or c.new_decoder_architecture,
        kv_heads=lambda c: c.num_kv_heads if c.new_decoder_architecture or not c.multi_query else 1,
        # Its SDPA call broadcasts one kv head over the query heads, which torch's ONNX SDPA
        # translation rejects; the eager path is the same math (fused by the eager_attention rule).
        attn_implementation="eager",
        notes="rotary or ALiBi (config.alibi); multi-query or grouped kv heads",
    ),
    DecoderExportConfig("gemma"),
    DecoderExportConfig(
        "gemma3", decoder_config="text_config", norms_per_layer=4, qk_norm=True, sliding_window_attr="sliding_window",
        # Hub checkpoints name the decoder `language_model.model.*`, transformers 5 `model.language_model.*`.
        key_mapping={r"^(language_model\.model|model\.language_model)\.": "model.", r"^language_model\.lm_head": "lm_head"},
        notes="the text decoder of a Gemma3ForConditionalGeneration checkpoint, exported as gemma3_text",
    ),
    DecoderExportConfig(
        "gemma4_text", norm_count=_gemma4_norms, kv_layout=per_layer_cache_dims, sliding_window_attr="sliding_window",
        notes="per-layer cache shapes (full-attention layers: global_head_dim); per-layer input embeddings; "
        "kv-sharing layers keep cache I/O they pass through unchanged",
    ),
    DecoderExportConfig("glm", rotary_dim=_partial_rotary, rotary_interleaved=True),
    DecoderExportConfig("glm4", norms_per_layer=4, rotary_dim=_partial_rotary, rotary_interleaved=True),
    DecoderExportConfig("gpt_bigcode", norm_op="LayerNormalization", positions="learned", notes="multi-query attention"),
    DecoderExportConfig(
        "gpt_neox", norm_op="LayerNormalization", rotary_dim=_partial_rotary, parallel_block=lambda c: c.use_parallel_residual,
    ),
    DecoderExportConfig(
        "gptj", norm_op="LayerNormalization", norms_per_layer=1, rotary_dim=lambda c: c.rotary_dim or _head_dim(c),
        rotary_interleaved=True, parallel_block=True,
    ),
    DecoderExportConfig("helium", rotary_interleaved=True),
    DecoderExportConfig("hunyuan_v1_dense", qk_norm=True, notes="q/k norms after the rotary embedding"),
    DecoderExportConfig(
        "minicpm3", norms_per_layer=lambda c: 3 + (c.q_lora_rank is not None), kv_layout=mla_cache_dims,
        unfused={
            "Attention": "multi-head latent attention: the cache holds the compressed latent (as transformers' does) and "
            "kv_b_proj expands it to per-head keys/values before a standard Attention every step; the absorbed form "
            "(attention scored against the latent directly) is not applied",
        },
        notes="MLA: latent KV cache [batch, 1, past, kv_lora_rank] (key) and [batch, 1, past, qk_rope_head_dim] (value)",
    ),
    DecoderExportConfig("ministral", sliding_window_attr="sliding_window"),
    DecoderExportConfig("nemotron", norm_op="LayerNormalization", rotary_dim=_partial_rotary, notes="LayerNorm1P (weight + 1); ReLU^2 MLP"),
    DecoderExportConfig("olmo", norm_op="LayerNormalization", notes="LayerNorm without parameters; optional q/k/v clipping"),
    DecoderExportConfig("olmo3", qk_norm=True, sliding_window_attr="sliding_window", notes="post-norms only; full-width q/k norms"),
    DecoderExportConfig("opt", norm_op="LayerNormalization", positions="learned", notes="learned positions offset by 2"),
    DecoderExportConfig(
        "phi", norm_op="LayerNormalization", norms_per_layer=1, qk_norm=lambda c: c.qk_layernorm, rotary_dim=_partial_rotary,
        parallel_block=True,
    ),
    DecoderExportConfig("seed_oss"),
    DecoderExportConfig(
        "stablelm", norm_op="LayerNormalization", rotary_dim=_partial_rotary,
        norm_count=lambda c: c.num_hidden_layers * ((1 if c.use_parallel_residual else 2)
                                                   + (c.num_attention_heads + c.num_key_value_heads if c.qk_layernorm else 0)) + 1,
        parallel_block=lambda c: c.use_parallel_residual, notes="q/k LayerNorms are per head (one per head) when present",
    ),
    DecoderExportConfig("starcoder2", norm_op="LayerNormalization", sliding_window_attr="sliding_window"),
):
    register_export_config(_entry)

# Hybrid decoders (conv / state-space / linear-attention caches) and Mixture-of-Experts families
# register themselves.
from . import hybrid  # noqa: E402,F401
from . import moe  # noqa: E402,F401
