"""`ORTModelForCausalLM.forward`: one run of the graph on caller tensors, and the cache adapter
between transformers' `Cache` objects (or tuples) and the graph's flat `past_*` inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from optimum_onnx23.errors import InvalidArgumentError

from .io_spec import DecoderIO
from .limits import check_context

__all__ = ["as_int64", "flat_cache", "present_cache", "run_forward"]


def as_int64(value: Any, name: str) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 2:
        raise InvalidArgumentError(f"{name} must be a [batch, length] array, got shape {array.shape}.")
    return np.ascontiguousarray(array, dtype=np.int64)


def flat_cache(cache: Cache | tuple | list | None, io: DecoderIO) -> list[np.ndarray] | None:
    """[k0, v0, k1, v1, ...] (hybrids: the past_* inputs in graph order) as numpy from a
    transformers `Cache`, per-layer pairs or a flat tuple."""
    if cache is None:
        return None
    if isinstance(cache, Cache):
        if any(hasattr(layer, "conv_states") for layer in cache.layers):
            raise InvalidArgumentError(
                "A transformers hybrid Cache cannot be fed as is: pass the tuple of present tensors forward() returned."
            )
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    elif cache and isinstance(cache[0], (tuple, list)):
        tensors = [t for pair in cache for t in pair]
    else:
        tensors = list(cache)
    count = len(io.cache)
    if len(tensors) != count or any(t is None for t in tensors):
        layout = "its past_* inputs, in graph order" if io.hybrid else f"a key and a value for each of {io.num_layers} layers"
        raise InvalidArgumentError(f"The cache holds {len(tensors)} tensors; this model takes {count} ({layout}).")
    return [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in tensors]


def present_cache(outputs: list[np.ndarray], io: DecoderIO) -> DynamicCache | tuple:
    """The graph's presents as the next call takes them: a `DynamicCache` of keys and values, or
    for hybrids the tuple in graph order (transformers' hybrid caches have no common layout)."""
    tensors = [torch.from_numpy(o) for o in outputs]
    if io.hybrid:
        return tuple(tensors)
    present = DynamicCache()
    for i in range(io.num_layers):
        present.update(tensors[2 * i], tensors[2 * i + 1], i)
    return present


def run_forward(
    session: ort.InferenceSession,
    io: DecoderIO,
    config,
    input_ids: torch.Tensor | np.ndarray,
    attention_mask: torch.Tensor | np.ndarray | None,
    cache: Cache | tuple | None,
    position_ids: torch.Tensor | np.ndarray | None,
    use_cache: bool,
) -> CausalLMOutputWithPast:
    """See `ORTModelForCausalLM.forward`."""
    if io.static:
        raise InvalidArgumentError(
            "forward() runs dynamic-cache exports; this one has a static cache (write_indices): use "
            "generate() or new_state(), or re-export without --cache static."
        )
    use_torch = isinstance(input_ids, torch.Tensor)
    ids = as_int64(input_ids, "input_ids")
    batch, length = ids.shape
    pasts = flat_cache(cache, io)
    if pasts is None:  # hybrid decoders' states start at zero
        pasts = [np.zeros(shape, c.dtype) for shape, c in zip(io.cache_shapes(batch, 0), io.cache)]
    past_length = next((p.shape[2] for p, c in zip(pasts, io.cache) if not c.is_state), None)
    if past_length is None:  # no attention layer (Mamba-2): the mask says how long the past is
        past_length = 0 if attention_mask is None else as_int64(attention_mask, "attention_mask").shape[1] - length
    check_context(config, io, past_length + length, f"The past ({past_length} positions) plus {length} new tokens")
    mask = np.ones((batch, past_length + length), np.int64) if attention_mask is None else as_int64(attention_mask, "attention_mask")
    if mask.shape != (batch, past_length + length):
        raise InvalidArgumentError(
            f"attention_mask has shape {mask.shape}; it must cover the past and new positions: {(batch, past_length + length)}."
        )
    feeds = {"input_ids": ids, "attention_mask": mask}
    if io.has_position_ids:
        if position_ids is None:  # transformers' and optimum-onnx's forward: the cache positions, padding or not
            position_ids = np.broadcast_to(np.arange(past_length, past_length + length), (batch, length))
        feeds["position_ids"] = as_int64(position_ids, "position_ids")
    feeds.update((c.past, np.ascontiguousarray(p, dtype=c.dtype)) for c, p in zip(io.cache, pasts))
    names = ["logits", *(io.present_names() if use_cache else [])]
    outputs = session.run(names, feeds)
    logits = outputs[0].astype(np.float32, copy=False)
    present = present_cache(outputs[1:], io) if use_cache else None
    return CausalLMOutputWithPast(logits=torch.from_numpy(logits) if use_torch else logits, cache=present)
