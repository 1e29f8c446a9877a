"""Declarative export configs for decoder LLMs: one small entry per architecture.

An entry says what the exported graph looks like for a `model_type`: which normalization op it
fuses to, how many normalizations each layer has, which layers carry rotary embeddings, and the
config attributes that hold the KV-cache layout (layers, kv heads, head_dim) and the attention
quirks (sliding window, logit softcap). Everything else (I/O names, dynamic axes, dummy inputs)
is shared by all decoders and derived here from the entry and the model's `PretrainedConfig`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UnsupportedArchitectureError

__all__ = [
    "DecoderExportConfig",
    "TASKS",
    "EXPORT_CONFIGS",
    "get_export_config",
    "register_export_config",
]

# optimum's task names; "-with-past" adds the KV cache as graph I/O.
TASKS = ("text-generation", "text-generation-with-past")

# Sample sizes used to trace: all distinct and > 1 so torch.export keeps them symbolic.
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 5, 3


def _all_layers(config) -> int:
    return config.num_hidden_layers


@dataclass(frozen=True)
class DecoderExportConfig:
    """How one decoder architecture maps to the exported ONNX graph."""

    model_type: str
    norm_op: str = "RMSNormalization"
    norms_per_layer: int = 2
    # Per-head q/k norms (qwen3, gemma3) or full-width ones (olmo2): two more normalizations a layer.
    qk_norm: bool = False
    # Number of layers whose q and k go through RotaryEmbedding; None = no rotary (learned positions).
    rotary_layers: Callable[[object], int] | None = _all_layers
    # Config attributes; the sliding window is applied through the mask, the cache stays full-length.
    sliding_window_attr: str | None = None
    softcap_attr: str | None = None
    # Per standard op, why the family has none (or fewer) where a reader would expect one.
    unfused: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    extra: dict = field(default_factory=dict)

    # ---- KV-cache layout -------------------------------------------------------------------
    def num_layers(self, config) -> int:
        return config.num_hidden_layers

    def num_kv_heads(self, config) -> int:
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads

    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def cache_shapes(self, config, batch_size, length) -> list[tuple]:
        """`[batch, heads, length, size]` of every past tensor, in I/O order (key, value per layer)."""
        shape = (batch_size, self.num_kv_heads(config), length, self.head_dim(config))
        return [shape] * (2 * self.num_layers(config))

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

    # ---- what the fused graph must contain -------------------------------------------------
    def expected_fusions(self, config) -> dict[str, int]:
        layers = self.num_layers(config)
        norms = layers * (self.norms_per_layer + (2 if self.qk_norm else 0)) + 1
        expected = {"Attention": layers, self.norm_op: norms}
        if self.rotary_layers is not None:
            expected["RotaryEmbedding"] = 2 * self.rotary_layers(config)
        return expected

    def unfused_ops(self, config) -> dict[str, str]:
        """Per standard op, why the graph has none (or fewer than a reader would expect)."""
        return dict(self.unfused)


EXPORT_CONFIGS: dict[str, DecoderExportConfig] = {}


def register_export_config(entry: DecoderExportConfig) -> DecoderExportConfig:
    EXPORT_CONFIGS[entry.model_type] = entry
    return entry


def get_export_config(model_type: str) -> DecoderExportConfig:
    try:
        return EXPORT_CONFIGS[model_type]
    except KeyError:
        supported = ", ".join(sorted(EXPORT_CONFIGS))
        raise UnsupportedArchitectureError(
            f"Architecture `{model_type}` is not supported by the dynamo ONNX exporter; supported model types: {supported}."
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
    DecoderExportConfig("gpt2", norm_op="LayerNormalization", rotary_layers=None, notes="learned absolute positions"),
    DecoderExportConfig("granite"),
    DecoderExportConfig("olmo2", qk_norm=True, notes="post-norms only; full-width q/k norms"),
    DecoderExportConfig(
        "smollm3",
        # no_rope_layers[i] == 1 means layer i *uses* rope (transformers' naming).
        rotary_layers=lambda config: sum(config.no_rope_layers[: config.num_hidden_layers]),
        sliding_window_attr="sliding_window",
    ),
):
    register_export_config(_entry)

from . import moe  # noqa: E402,F401  (registers the Mixture-of-Experts families)
