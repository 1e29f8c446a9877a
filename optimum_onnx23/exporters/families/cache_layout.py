"""A decoder cache that is more than K and V: which layer holds what, declared once per export.

Every decoder has one: a dense decoder's holds a key and a value per layer. Hybrid decoders (LFM2, Qwen3.5 / Qwen3-Next, Granite 4, Falcon-H1, Bamba, Nemotron-H, Mamba-2)
keep, per layer, either the growing keys and values of an attention layer or fixed-size states: the
last `K - 1` inputs of a short causal convolution and, for state-space / linear-attention layers,
a recurrent matrix. `CacheLayout` lists those tensors; everything the exporter and the runtime need
is derived from it:

- graph I/O names, following transformers.js (which runs these families from one graph):
  `past_key_values.{i}.key|value` / `present.{i}.key|value` (attention layers only),
  `past_conv.{i}` / `present_conv.{i}` `[batch, channels, K - 1]`,
  `past_ssm.{i}` / `present_ssm.{i}` `[batch, heads, head_dim, state]` (Mamba-2 layers),
  `past_recurrent.{i}` / `present_recurrent.{i}` `[batch, heads, k_dim, v_dim]` (gated DeltaNet);
  every dimension of a state but the batch is a number in the graph, so a consumer can allocate
  the first (all-zero) state from the graph's declared shapes alone;
- torch.export dynamic shapes and the sample inputs (`tracing.signature`);
- `tracing.export_cache.ExportCache`: the transformers `Cache` the wrapper rebuilds from the flat
  tensors inside the trace, whose conv and recurrent updates record the presents instead of
  writing in place;
- the JSON description written to the report, the ONNX metadata and config.json.

A zero state is exactly "no past": a causal convolution pads with zeros and a recurrence started
from zero equals one started from nothing, so one graph serves prefill (zero states, empty KV) and
decode.

The conv state keeps `K - 1` positions (onnxruntime-genai's LFM2 layout): transformers keeps `K`,
but the oldest one never reaches an output (a window of K ending at the first new token spans the
last K - 1 cached inputs), so `present_conv` is transformers' state without its first column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Sequence

from ...contract import past_name, present_name

__all__ = [
    "CACHE_LAYOUT_KEY",
    "STATE_KINDS",
    "CacheTensor",
    "CacheLayout",
]

# config.json key and ONNX metadata key holding `CacheLayout.describe()`.
CACHE_LAYOUT_KEY = "optimum_onnx23_cache_layout"

STATE_KINDS = ("conv", "ssm", "recurrent")


@dataclass(frozen=True)
class CacheTensor:
    """One cache input/output pair. `shape` excludes the batch; for keys and values the sequence
    axis (index 1 of `shape`) is None: it grows by the step's length."""

    layer: int
    kind: str  # key | value | conv | ssm | recurrent
    shape: tuple[int | None, ...]
    float32: bool = False  # recurrent states stay fp32 in transformers whatever the model dtype

    @property
    def input_name(self) -> str:
        return past_name(self.kind, self.layer)

    @property
    def output_name(self) -> str:
        return present_name(self.kind, self.layer)

    @property
    def is_state(self) -> bool:
        return self.kind in STATE_KINDS


@dataclass(frozen=True)
class CacheLayout:
    """The cache tensors of every layer, in graph order (by layer; key, value, conv, then ssm or
    recurrent within a layer)."""

    num_layers: int
    tensors: tuple[CacheTensor, ...]
    # Layer kinds as transformers' config names them, for the description only.
    layer_types: tuple[str, ...] = field(default=())

    @classmethod
    def build(
        cls,
        layer_kinds: Sequence[Sequence[str]],
        kv_heads: int | None = None,
        head_dim: int | None = None,
        conv_shape=None,
        state_shape=None,
        layer_types: Sequence[str] = (),
    ) -> "CacheLayout":
        """`layer_kinds[i]` is a subset of ("attention", "conv", "ssm", "recurrent");
        `conv_shape(i)` -> (channels, K - 1) and `state_shape(i)` -> the state's shape without batch."""
        tensors = []
        for i, kinds in enumerate(layer_kinds):
            unknown = set(kinds) - {"attention", *STATE_KINDS}
            if unknown:
                raise ValueError(f"unknown cache kinds {sorted(unknown)} for layer {i}")
            if "attention" in kinds:
                tensors += [CacheTensor(i, kv, (kv_heads, None, head_dim)) for kv in ("key", "value")]
            if "conv" in kinds:
                tensors.append(CacheTensor(i, "conv", tuple(conv_shape(i))))
            for kind in ("ssm", "recurrent"):
                if kind in kinds:
                    tensors.append(CacheTensor(i, kind, tuple(state_shape(i)), float32=True))
        return cls(len(layer_kinds), tuple(tensors), tuple(layer_types))

    @classmethod
    def attention(cls, dims: Sequence[tuple[int, int, int]]) -> "CacheLayout":
        """A dense decoder's cache: per layer, (kv heads, key size, value size)."""
        tensors = [
            CacheTensor(i, kind, (heads, None, size))
            for i, (heads, key, value) in enumerate(dims)
            for kind, size in (("key", key), ("value", value))
        ]
        return cls(len(dims), tuple(tensors))

    def first(self, num_layers: int) -> "CacheLayout":
        """The layout of the first `num_layers` layers (a shallow trace, exporters.passes.layer_replication)."""
        if num_layers >= self.num_layers:
            return self
        tensors = tuple(t for t in self.tensors if t.layer < num_layers)
        return replace(self, num_layers=num_layers, tensors=tensors, layer_types=self.layer_types[:num_layers])

    # ---- what each layer holds -----------------------------------------------------------------
    def kinds(self, layer: int) -> tuple[str, ...]:
        return tuple(t.kind for t in self.tensors if t.layer == layer)

    @property
    def attention_layers(self) -> list[int]:
        return sorted({t.layer for t in self.tensors if t.kind == "key"})

    @property
    def state_layers(self) -> list[int]:
        return sorted({t.layer for t in self.tensors if t.is_state})

    # ---- graph I/O ------------------------------------------------------------------------------
    def input_names(self) -> list[str]:
        return [t.input_name for t in self.tensors]

    def output_names(self) -> list[str]:
        return [t.output_name for t in self.tensors]

    def state_pairs(self) -> list[tuple[str, str]]:
        """(past, present) names of the fixed-size states."""
        return [(t.input_name, t.output_name) for t in self.tensors if t.is_state]

    # ---- description --------------------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-ready: per layer, its type and the names and shapes ("batch_size", "past_sequence_length"
        for the symbolic axes) of its cache inputs and outputs."""
        layers = []
        for i in range(self.num_layers):
            entries = [t for t in self.tensors if t.layer == i]
            layer = {"layer": i, "cache": [t.kind for t in entries]}
            if self.layer_types:
                layer["layer_type"] = self.layer_types[i]
            layer["tensors"] = {
                t.kind: {
                    "input": t.input_name,
                    "output": t.output_name,
                    "shape": ["batch_size", *("past_sequence_length" if d is None else d for d in t.shape)],
                    **({"dtype": "float32"} if t.float32 else {}),
                }
                for t in entries
            }
            layers.append(layer)
        return {"format": 1, "layers": layers}

    def to_json(self) -> str:
        return json.dumps(self.describe(), separators=(",", ":"))
