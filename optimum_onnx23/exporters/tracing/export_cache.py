"""The transformers `Cache` the wrapper rebuilds from the graph's flat cache tensors inside the trace.

One `ExportCache` per forward, laid out by the export's `CacheLayout`: attention layers get a
`DynamicLayer` (a growing cache) or, for a static cache, a `WriteLayer` that writes the step's keys
and values into the fixed buffer at `write_indices`; conv and recurrent states get layers whose
updates record the presents instead of writing into a graph input. `presents()` reads them back in
the layout's order.

Static cache: each attention layer's write is an out-of-place scatter (`kv_write`), which exports as
a standard opset-23 ScatterElements on the past input; `exporters.passes.static_cache` lowers it to
TensorScatter after the fusions.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import (
    Cache,
    DummyLayer,
    DynamicLayer,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionLayer,
    StaticLayer,
)

from ..families.cache_layout import CacheLayout

__all__ = ["ExportCache", "WriteLayer", "kv_write"]


def kv_write(cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    """`cache` with `update` [B, H, S, D] written at positions write_indices[b] + [0, S) of axis 2.

    Out of place, so torch.export sees no input mutation; it exports as one ScatterElements on the
    past input, which `passes.static_cache.lower_kv_writes` turns into TensorScatter."""
    batch, heads, length, dim = update.shape
    positions = write_indices[:, None] + torch.arange(length, device=update.device)
    index = positions[:, None, :, None].expand(batch, heads, length, dim)
    return cache.scatter(2, index, update)


class WriteLayer(StaticLayer):
    """A static layer over given buffers; `update` returns the written buffers without mutating."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_indices: torch.Tensor):
        super().__init__(max_cache_len=keys.shape[2])
        self.keys, self.values = keys, values
        self.write_indices = write_indices
        # Mask offset of the first new token; rows share it when the runtime left-pads.
        self.cumulative_length = write_indices[0]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys = kv_write(self.keys, key_states, self.write_indices)
        self.values = kv_write(self.values, value_states, self.write_indices)
        return self.keys, self.values


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

    With `write_indices` (a static cache) every attention layer is a `WriteLayer` over its buffer.
    A cache of attention layers only, written as it grows, is transformers' `DynamicCache` (what
    dense decoders run with); others are a `Cache` of one layer object per layer."""

    def __init__(self, layout: CacheLayout, pasts: Sequence[torch.Tensor], write_indices: torch.Tensor | None = None):
        self.layout = layout
        self.dynamic = write_indices is None and not layout.state_layers
        by_layer: dict[int, dict[str, torch.Tensor]] = {}
        for spec, tensor in zip(layout.tensors, pasts, strict=True):
            by_layer.setdefault(spec.layer, {})["recurrent" if spec.kind == "ssm" else spec.kind] = tensor
        if self.dynamic:
            # Plain full-length layers for every architecture, sliding-window ones included: the
            # window is enforced by the attention mask, so the cache I/O keeps one length for all
            # layers, as optimum-onnx's format expects.
            self.cache = DynamicCache()
            for i in range(layout.num_layers):
                self.cache.update(by_layer[i]["key"], by_layer[i]["value"], i)
            return
        layers = []
        for i in range(layout.num_layers):
            held = by_layer.get(i, {})
            has_state = "conv" in held or "recurrent" in held
            if "key" in held and has_state:
                if write_indices is not None:
                    raise NotImplementedError("a static cache for layers with both attention and recurrent state")
                layers.append(_StateAndAttentionLayer(held.get("conv"), held.get("recurrent"), held["key"], held["value"]))
            elif "key" in held:
                if write_indices is not None:
                    layers.append(WriteLayer(held["key"], held["value"], write_indices))
                else:
                    layer = DynamicLayer()
                    layer.update(held["key"], held["value"])
                    layers.append(layer)
            elif has_state:
                layers.append(_StateLayer(held.get("conv"), held.get("recurrent")))
            else:  # an MLP/MoE-only layer (Nemotron-H) holds nothing
                layers.append(DummyLayer())
        self.cache = Cache(layers=layers)

    def presents(self, returned: Cache) -> list[torch.Tensor]:
        """The present tensors in layout order. `returned` is the cache the model's output carries:
        a `DynamicCache` is read from it; the others are read from the layers built here (a model
        must have used them: the wrapper checks it where the layout holds states)."""
        source = returned if self.dynamic else self.cache
        out = []
        for spec in self.layout.tensors:
            layer = source.layers[spec.layer]
            if spec.kind == "key":
                out.append(layer.keys)
            elif spec.kind == "value":
                out.append(layer.values)
            else:
                states = layer.presents()
                out.append(states["conv" if spec.kind == "conv" else "recurrent"])
        return out
