"""What an exported decoder graph declares: the cache layout and the cache mode, read from the
session's inputs and outputs (and config.json only where the graph leaves a dimension symbolic).

The cache is a list of input/output pairs: `past_key_values.{i}.key|value` -> `present.{i}.key|value`
(growing along axis 2, attention layers) and, for hybrid decoders, fixed-size states
`past_conv.{i}` -> `present_conv.{i}`, `past_ssm.{i}` -> `present_ssm.{i}`,
`past_recurrent.{i}` -> `present_recurrent.{i}` (names in optimum_onnx23.contract)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from optimum_onnx23.contract import INPLACE_STATES_KEY, PAST_KV_PATTERN, PAST_STATE_PATTERN, WRITE_INDICES, past_name, present_name
from optimum_onnx23.errors import UnsafeModelFileError

__all__ = ["CacheIO", "DecoderIO", "read_decoder_io", "WRITE_INDICES", "INPLACE_STATES_KEY"]

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class CacheIO:
    """One cache tensor: `shape` excludes the batch; None marks the growing (past) axis of K/V."""

    past: str
    present: str
    kind: str  # key | value | conv | ssm | recurrent
    layer: int
    shape: tuple[int | None, ...]
    dtype: type

    @property
    def is_state(self) -> bool:
        return self.kind not in ("key", "value")


@dataclass(frozen=True)
class DecoderIO:
    """The decoder's I/O contract. `max_cache_len` is set only for static-cache graphs.
    `num_kv_heads` / `head_dim` are the last attention layer's (0 when there are none); `cache`
    holds every tensor's own shape, since keys and values may differ (MLA: keys carry the rotary
    part, values do not) and so may layers (gemma4's full-attention layers)."""

    input_names: tuple[str, ...]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: type
    has_position_ids: bool
    max_cache_len: int | None
    logits_last_only: bool
    cache: tuple[CacheIO, ...] = ()
    inplace_states: frozenset[str] = frozenset()

    @property
    def static(self) -> bool:
        return self.max_cache_len is not None

    @property
    def hybrid(self) -> bool:
        """Whether the cache holds more than keys and values (conv / recurrent states)."""
        return any(c.is_state for c in self.cache)

    def past_names(self) -> list[str]:
        return [c.past for c in self.cache]

    def present_names(self) -> list[str]:
        return [c.present for c in self.cache]

    def cache_shapes(self, batch_size: int, length: int) -> list[tuple[int, ...]]:
        """The shape of every past tensor, in `past_names()` order: K/V `[batch, heads, length,
        head size]` (keys and values may differ: MLA; so may layers: gemma4), states fixed."""
        return [(batch_size, *(length if d is None else d for d in c.shape)) for c in self.cache]


def _dim(value, fallback, what: str, where: str) -> int:
    """`value` if the graph fixes it, else `fallback()` (read from config.json only when needed)."""
    if isinstance(value, int):
        return value
    fallback = fallback()
    if fallback is None:
        raise UnsafeModelFileError(f"{where}: the graph leaves the {what} of the KV cache symbolic and config.json lacks it.")
    return int(fallback)


def _check_type(value, where: str) -> type:
    if value.type not in _NUMPY_TYPES:
        from optimum_onnx23.errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"{where} has a {value.type} cache input `{value.name}`, which the runtime cannot feed; export with --dtype fp32 or fp16."
        )
    return _NUMPY_TYPES[value.type]


def read_decoder_io(session: ort.InferenceSession, config=None, where: str = "model.onnx") -> DecoderIO:
    """Raise `UnsafeModelFileError` (one line) if the graph is not a decoder with a cache."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in ("input_ids", "attention_mask") if n not in inputs] + [n for n in ("logits",) if n not in outputs]
    pasts = sorted({int(m.group(1)) for name in inputs if (m := PAST_KV_PATTERN.match(name))})
    states = [(m.group(1), int(m.group(2)), name) for name in inputs if (m := PAST_STATE_PATTERN.match(name))]
    if missing or not (pasts or states):
        lacking = ", ".join(missing) if missing else "past_key_values.* inputs"
        raise UnsafeModelFileError(
            f"{where} is not a decoder exported with a KV cache (no {lacking}); export it with "
            "`optimum-cli export onnx --dynamo --task text-generation-with-past`."
        )
    if not states and pasts != list(range(len(pasts))):
        raise UnsafeModelFileError(f"{where} declares an incomplete KV cache (past/present names do not pair up).")
    if any(present_name(kv, i) not in outputs for i in pasts for kv in ("key", "value")) or any(
        present_name(kind, i) not in outputs for kind, i, _ in states
    ):
        raise UnsafeModelFileError(f"{where} declares an incomplete KV cache (past/present names do not pair up).")

    def heads_fallback():
        return None if config is None else getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)

    def head_dim_fallback():
        if config is None:
            return None
        return getattr(config, "head_dim", None) or (config.hidden_size // config.num_attention_heads if getattr(config, "hidden_size", None) else None)

    static = WRITE_INDICES in inputs
    cache: list[CacheIO] = []
    num_kv_heads = head_dim = 0
    max_cache_len = None
    for i in pasts:
        for kv in ("key", "value"):
            value = inputs[past_name(kv, i)]
            num_kv_heads = _dim(value.shape[1], heads_fallback, "head count", where)
            head_dim = _dim(value.shape[3], head_dim_fallback, "head size", where)
            if static:
                max_cache_len = _dim(value.shape[2], lambda: None, "length", where)
            cache.append(CacheIO(value.name, present_name(kv, i), kv, i, (num_kv_heads, None, head_dim), _check_type(value, where)))
    for kind, i, name in states:
        value = inputs[name]
        if not all(isinstance(d, int) for d in value.shape[1:]):
            raise UnsafeModelFileError(f"{where}: state input `{name}` has a symbolic shape {value.shape[1:]}; re-export it.")
        cache.append(CacheIO(name, present_name(kind, i), kind, i, tuple(value.shape[1:]), _check_type(value, where)))
    order = {"key": 0, "value": 1, "conv": 2, "ssm": 3, "recurrent": 3}
    cache.sort(key=lambda c: (c.layer, order[c.kind]))
    if static and max_cache_len is None:
        raise UnsafeModelFileError(f"{where} has `{WRITE_INDICES}` but no attention layer to write.")
    metadata = session.get_modelmeta().custom_metadata_map
    inplace = frozenset(n for n in metadata.get(INPLACE_STATES_KEY, "").split(",") if n)
    logits_shape = outputs["logits"].shape
    layers = max(c.layer for c in cache) + 1
    return DecoderIO(
        input_names=tuple(inputs),
        num_layers=layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        dtype=next((c.dtype for c in cache if not c.is_state), cache[0].dtype),
        has_position_ids="position_ids" in inputs,
        max_cache_len=max_cache_len,
        logits_last_only=len(logits_shape) == 3 and logits_shape[1] == 1,
        cache=tuple(cache),
        inplace_states=inplace,
    )
