"""What an exported decoder graph declares: the KV-cache layout and the cache mode, read from the
session's inputs and outputs (and config.json only where the graph leaves a dimension symbolic)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from optimum_onnx23.errors import UnsafeModelFileError

__all__ = ["DecoderIO", "read_decoder_io", "WRITE_INDICES"]

WRITE_INDICES = "write_indices"  # present only in static-cache exports
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class DecoderIO:
    """The decoder's I/O contract. `max_cache_len` is set only for static-cache graphs.

    `num_kv_heads`/`head_dim` are layer 0's key layout; `cache_dims` holds (heads, head size) of
    every past tensor in `past_names()` order, since keys and values may differ (MLA: keys carry
    the rotary part, values do not) and so may layers (gemma4's full-attention layers)."""

    input_names: tuple[str, ...]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: type
    has_position_ids: bool
    max_cache_len: int | None
    logits_last_only: bool
    cache_dims: tuple[tuple[int, int], ...] = ()

    @property
    def static(self) -> bool:
        return self.max_cache_len is not None

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    def cache_shapes(self, batch_size: int, length: int) -> list[tuple[int, int, int, int]]:
        """`[batch, heads, length, head size]` of every past tensor, in `past_names()` order."""
        dims = self.cache_dims or ((self.num_kv_heads, self.head_dim),) * (2 * self.num_layers)
        return [(batch_size, heads, length, size) for heads, size in dims]


def _dim(value, fallback: int | None, what: str, where: str) -> int:
    if isinstance(value, int):
        return value
    if fallback is None:
        raise UnsafeModelFileError(f"{where}: the graph leaves the {what} of the KV cache symbolic and config.json lacks it.")
    return int(fallback)


def read_decoder_io(session: ort.InferenceSession, config=None, where: str = "model.onnx") -> DecoderIO:
    """Raise `UnsafeModelFileError` (one line) if the graph is not a decoder with a KV cache."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in ("input_ids", "attention_mask") if n not in inputs] + [n for n in ("logits",) if n not in outputs]
    pasts = sorted({int(m.group(1)) for name in inputs if (m := _PAST.match(name))})
    if missing or not pasts:
        lacking = ", ".join(missing) if missing else "past_key_values.* inputs"
        raise UnsafeModelFileError(
            f"{where} is not a decoder exported with a KV cache (no {lacking}); export it with "
            "`optimum-cli export onnx --dynamo --task text-generation-with-past`."
        )
    if pasts != list(range(len(pasts))) or any(f"present.{i}.key" not in outputs for i in pasts):
        raise UnsafeModelFileError(f"{where} declares an incomplete KV cache (past/present names do not pair up).")
    first = inputs["past_key_values.0.key"]
    if first.type not in _NUMPY_TYPES:
        from optimum_onnx23.errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"{where} has a {first.type} KV cache, which the runtime cannot feed; export with --dtype fp32 or fp16."
        )
    heads_fallback = head_dim_fallback = None
    if config is not None:
        heads_fallback = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
        head_dim_fallback = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads if getattr(config, "hidden_size", None) else None
        )
    static = WRITE_INDICES in inputs
    cache_dims = tuple(
        (
            _dim(inputs[name].shape[1], heads_fallback, "head count", where),
            _dim(inputs[name].shape[3], head_dim_fallback, "head size", where),
        )
        for name in (f"past_key_values.{i}.{kv}" for i in pasts for kv in ("key", "value"))
    )
    max_cache_len = _dim(first.shape[2], None, "length", where) if static else None
    logits_shape = outputs["logits"].shape
    return DecoderIO(
        input_names=tuple(inputs),
        num_layers=len(pasts),
        num_kv_heads=_dim(first.shape[1], heads_fallback, "head count", where),
        head_dim=_dim(first.shape[3], head_dim_fallback, "head size", where),
        dtype=_NUMPY_TYPES[first.type],
        has_position_ids="position_ids" in inputs,
        max_cache_len=max_cache_len,
        logits_last_only=len(logits_shape) == 3 and logits_shape[1] == 1,
        cache_dims=cache_dims,
    )
