"""A decoder cache that is more than K and V: which layer holds what, declared once per export.

Hybrid decoders (LFM2, Qwen3.5 / Qwen3-Next, Granite 4, Falcon-H1, Bamba, Nemotron-H, Mamba-2)
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
- torch.export dynamic shapes and the dummy / validation inputs;
- `ExportCache`: the transformers `Cache` the wrapper rebuilds from the flat tensors inside the
  trace, whose conv and recurrent updates record the presents instead of writing in place;
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
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers.cache_utils import (
    Cache,
    DynamicLayer,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionLayer,
)

__all__ = [
    "CACHE_LAYOUT_KEY",
    "STATE_KINDS",
    "CacheTensor",
    "CacheLayout",
    "ExportCache",
]

# config.json key and ONNX metadata key holding `CacheLayout.describe()`.
CACHE_LAYOUT_KEY = "optimum_onnx23_cache_layout"

# kind -> (input template, output template); transformers.js' names for these families.
_NAMES = {
    "key": ("past_key_values.{i}.key", "present.{i}.key"),
    "value": ("past_key_values.{i}.value", "present.{i}.value"),
    "conv": ("past_conv.{i}", "present_conv.{i}"),
    "ssm": ("past_ssm.{i}", "present_ssm.{i}"),
    "recurrent": ("past_recurrent.{i}", "present_recurrent.{i}"),
}
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
        return _NAMES[self.kind][0].format(i=self.layer)

    @property
    def output_name(self) -> str:
        return _NAMES[self.kind][1].format(i=self.layer)

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

    def dynamic_shapes(self, batch, past) -> tuple[dict, ...]:
        return tuple({0: batch, 2: past} if not t.is_state else {0: batch} for t in self.tensors)

    def dummy_tensors(
        self,
        batch_size: int,
        past_length: int,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        kv_length: int | None = None,
    ) -> list[torch.Tensor]:
        """Random past tensors, K/V `kv_length` long (default `past_length`; a static buffer's N);
        states are zero when `past_length` is 0 (a prefill has no state)."""
        out = []
        kv_length = past_length if kv_length is None else kv_length
        for t in self.tensors:
            shape = (batch_size, *(kv_length if d is None else d for d in t.shape))
            tensor_dtype = torch.float32 if t.float32 else dtype
            if t.is_state and past_length == 0:
                out.append(torch.zeros(shape, dtype=tensor_dtype))
            else:
                scale = 0.5 if t.is_state else 1.0  # a state the model could have produced: bounded
                out.append(torch.randn(shape, generator=generator, dtype=tensor_dtype) * scale)
        return out

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


# ---- the Cache the wrapper rebuilds inside the trace ---------------------------------------------------
class _GraphStates:
    """Conv and recurrent states read from graph inputs; their updates are recorded as presents.

    `record_past` makes transformers take `update_conv_state` + `causal_conv1d_fn` at every
    length: its one-token path (`causal_conv1d_update`) writes the state in place, which would
    write into a graph input. The recurrent state is a copy for the same reason (Mamba-2's
    one-token `selective_state_update` updates it in place and returns nothing else)."""

    def _init_states(self, conv: torch.Tensor | None, recurrent: torch.Tensor | None) -> None:
        self.record_past = True
        self.present_conv = self.present_recurrent = None
        if conv is not None:
            self.conv_states[0] = conv
            self.conv_kernel_size[0] = conv.shape[-1] + 1
            self.is_conv_states_initialized[0] = True
        if recurrent is not None:
            self.recurrent_states[0] = recurrent.clone()
            self.is_recurrent_states_initialized[0] = True
        self.has_previous_state[0] = True
        if conv is not None or recurrent is not None:
            self.dtype, self.device = (conv if conv is not None else recurrent).dtype, (conv if conv is not None else recurrent).device

    def update_conv_state(self, conv_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        past = self.conv_states[state_idx]
        full = torch.cat([past, conv_states.to(past.dtype)], dim=-1)
        self.present_conv = full[..., -past.shape[-1] :]
        return full

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        self.present_recurrent = recurrent_states
        return recurrent_states

    def presents(self) -> dict[str, torch.Tensor]:
        out = {}
        if self.is_conv_states_initialized[0]:
            out["conv"] = self.present_conv if self.present_conv is not None else self.conv_states[0]
        if self.is_recurrent_states_initialized[0]:
            out["recurrent"] = self.present_recurrent if self.present_recurrent is not None else self.recurrent_states[0]
        return out


class _StateLayer(_GraphStates, LinearAttentionLayer):
    def __init__(self, conv=None, recurrent=None):
        LinearAttentionLayer.__init__(self)
        self._init_states(conv, recurrent)


class _StateAndAttentionLayer(_GraphStates, LinearAttentionAndFullAttentionLayer):
    """Falcon-H1: attention and Mamba-2 side by side in every layer."""

    def __init__(self, conv, recurrent, key, value):
        LinearAttentionAndFullAttentionLayer.__init__(self)
        DynamicLayer.update(self, key, value)
        self._init_states(conv, recurrent)


class ExportCache:
    """Build a transformers `Cache` from the flat past tensors (in `layout` order) and read the
    presents back in the same order after the forward.

    `attention_layer(key, value)` makes each attention layer's cache object (a `DynamicLayer` by
    default; the static-cache export passes its in-place write layer)."""

    def __init__(self, layout: CacheLayout, pasts: Sequence[torch.Tensor], attention_layer=None):
        self.layout = layout
        by_layer: dict[int, dict[str, torch.Tensor]] = {}
        for spec, tensor in zip(layout.tensors, pasts, strict=True):
            by_layer.setdefault(spec.layer, {})["recurrent" if spec.kind == "ssm" else spec.kind] = tensor
        layers = []
        for i in range(layout.num_layers):
            held = by_layer.get(i, {})
            has_state = "conv" in held or "recurrent" in held
            if "key" in held and has_state:
                if attention_layer is not None:
                    raise NotImplementedError("a static cache for layers with both attention and recurrent state")
                layers.append(_StateAndAttentionLayer(held.get("conv"), held.get("recurrent"), held["key"], held["value"]))
            elif "key" in held:
                if attention_layer is not None:
                    layers.append(attention_layer(held["key"], held["value"]))
                else:
                    layer = DynamicLayer()
                    layer.update(held["key"], held["value"])
                    layers.append(layer)
            elif has_state:
                layers.append(_StateLayer(held.get("conv"), held.get("recurrent")))
            else:  # an MLP/MoE-only layer (Nemotron-H) holds nothing
                from transformers.cache_utils import DummyLayer

                layers.append(DummyLayer())
        self.cache = Cache(layers=layers)

    def presents(self) -> list[torch.Tensor]:
        out = []
        for spec in self.layout.tensors:
            layer = self.cache.layers[spec.layer]
            if spec.kind == "key":
                out.append(layer.keys)
            elif spec.kind == "value":
                out.append(layer.values)
            else:
                states = layer.presents()
                out.append(states["conv" if spec.kind == "conv" else "recurrent"])
        return out
