"""The export signature: one description of the graph's interface per (family, cache mode).

Built once when the model is loaded (`build_signature`), from the family entry, the model's config
and the options that shape the I/O (with or without the cache, dynamic or static cache, all or last
logits). Everything that depends on the interface reads it, and nothing decides static vs dynamic
again: the I/O names, torch.export's dynamic dims and the sample inputs (trace), the same samples
at other sizes (validation), the flat-tensor wrapper, the KV writes the static-cache lowering must
find, and the cache layout the report and the metadata record.

Graph I/O, in this order: `input_ids` [B, S], `attention_mask` ([B, past + S]; a static cache's
[B, N] spans the whole buffer), `position_ids` [B, S] (all but Mamba-2), `write_indices` [B] (static
cache only: the slot of the first new token), then the cache tensors in `CacheLayout` order; outputs
`logits` and the presents in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch

from ...arguments import CACHE_MODES, check_static_arguments  # noqa: F401 (re-exported)
from ...contract import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, WRITE_INDICES
from ...errors import UnsupportedArchitectureError
from ..families.cache_layout import CacheLayout
from ..families.schema import Config, DecoderExportConfig

__all__ = [
    "CACHE_MODES",
    "TRACE_BATCH",
    "TRACE_PAST",
    "TRACE_SEQUENCE",
    "ExportSignature",
    "build_signature",
    "check_static_arguments",
]

# Sample sizes used to trace: all distinct and > 1 so torch.export keeps them symbolic.
TRACE_BATCH, TRACE_SEQUENCE, TRACE_PAST = 2, 5, 3


@dataclass(frozen=True)
class ExportSignature:
    """The graph's interface for one export (see the module docstring). `static_len` is the static
    buffer length N, None for a dynamic cache; `logits_to_keep` 1 for last-position logits."""

    family: DecoderExportConfig
    config: Config
    layout: CacheLayout
    with_past: bool
    static_len: int | None = None
    logits_to_keep: int = 0

    @property
    def static(self) -> bool:
        return self.static_len is not None

    @property
    def uses_position_ids(self) -> bool:
        return self.family.uses_position_ids

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    # ---- graph I/O ----------------------------------------------------------------------------
    @cached_property
    def input_names(self) -> list[str]:
        names = [INPUT_IDS, ATTENTION_MASK] + ([POSITION_IDS] if self.uses_position_ids else [])
        names += [WRITE_INDICES] if self.static else []
        return names + (self.layout.input_names() if self.with_past else [])

    @cached_property
    def output_names(self) -> list[str]:
        return [LOGITS] + (self.layout.output_names() if self.with_past else [])

    def dynamic_shapes(self) -> tuple:
        """torch.export `Dim`s in the wrapper's argument order: `input_ids`, `attention_mask`, then
        one tuple for the rest (`DecoderWrapper.forward(input_ids, attention_mask, *rest)`)."""
        from torch.export import Dim

        batch, seq = Dim("batch_size"), Dim("sequence_length")
        if self.static:  # fixed-length buffers: only the batch (and the new tokens) vary
            mask = {0: batch}
        else:
            mask = {0: batch, 1: Dim("total_sequence_length") if self.with_past else seq}
        rest: list[dict] = [{0: batch, 1: seq}] if self.uses_position_ids else []
        rest += [{0: batch}] if self.static else []
        if self.with_past:
            past = None if self.static else Dim("past_sequence_length", min=0)
            rest += [{0: batch} if t.is_state or past is None else {0: batch, 2: past} for t in self.layout.tensors]
        return ({0: batch, 1: seq}, mask, tuple(rest))

    # ---- sample inputs ---------------------------------------------------------------------------
    def trace_length(self, limit: int | None = None) -> int:
        """The new tokens of the trace sample: more than one scan chunk where the family scans."""
        chunk = self.family.scan_chunk
        length = TRACE_SEQUENCE if chunk is None else max(TRACE_SEQUENCE, chunk(self.config) + 3)
        return length if limit is None else max(2, min(length, limit))

    def sample_inputs(
        self,
        batch_size: int = TRACE_BATCH,
        sequence_length: int | None = None,
        past_length: int = TRACE_PAST,
        left_padding: int = 0,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Inputs in the graph's order: `past_length` cached positions, then `sequence_length` new
        tokens (default: the trace length); row 0 has `left_padding` masked positions. Cached keys
        and values are random, states too (bounded) unless the past is empty (then zero: a prefill
        has no state). A static cache's unfilled slots hold random values (they must be masked)."""
        past_length = past_length if self.with_past else 0
        if sequence_length is None:
            sequence_length = self.trace_length(self.static_len - past_length if self.static else None)
        total = past_length + sequence_length
        if self.static and total > self.static_len:
            raise ValueError(f"sample of {total} positions exceeds max_cache_len={self.static_len}")
        input_ids = torch.randint(0, self.config.vocab_size, (batch_size, sequence_length), generator=generator)
        attention_mask = torch.zeros(batch_size, self.static_len or total, dtype=torch.int64)
        attention_mask[:, :total] = 1
        attention_mask[0, : min(left_padding, total - 1)] = 0
        inputs = [input_ids, attention_mask]
        if self.uses_position_ids:
            inputs.append((attention_mask[:, :total].cumsum(-1) - 1).clamp(min=0)[:, past_length:])
        if self.static:
            inputs.append(torch.full((batch_size,), past_length, dtype=torch.int64))
        if self.with_past:
            inputs += self._cache_tensors(batch_size, past_length, dtype, generator)
        return tuple(inputs)

    def _cache_tensors(self, batch_size: int, past_length: int, dtype: torch.dtype, generator) -> list[torch.Tensor]:
        kv_length = self.static_len or past_length
        out = []
        for t in self.layout.tensors:
            shape = (batch_size, *(kv_length if d is None else d for d in t.shape))
            tensor_dtype = torch.float32 if t.float32 else dtype
            if t.is_state and past_length == 0:
                out.append(torch.zeros(shape, dtype=tensor_dtype))
            elif t.is_state:  # a state the model could have produced: bounded
                out.append(torch.randn(shape, generator=generator, dtype=tensor_dtype) * 0.5)
            else:
                out.append(torch.randn(shape, generator=generator, dtype=tensor_dtype))
        return out

    # ---- what else reads it --------------------------------------------------------------------
    def wrapper(self, model: torch.nn.Module) -> torch.nn.Module:
        """The flat-tensor module torch.export traces and validation runs."""
        from .wrapper import DecoderWrapper

        return DecoderWrapper(model, self)

    @property
    def kv_writes(self) -> int:
        """KV writes the static-cache lowering must find: a key and a value per attention layer."""
        return 2 * len(self.layout.attention_layers)

    @property
    def kv_inputs(self) -> frozenset[str]:
        """The attention layers' past inputs (the buffers a static cache writes)."""
        return frozenset(t.input_name for t in self.layout.tensors if t.kind in ("key", "value"))

    def first_layers(self, num_layers: int) -> "ExportSignature":
        """This signature for the first `num_layers` layers (a shallow trace)."""
        return replace(self, layout=self.layout.first(num_layers))


def build_signature(
    family: DecoderExportConfig,
    config: Config,
    with_past: bool,
    static_len: int | None = None,
    logits_to_keep: int = 0,
) -> ExportSignature:
    """The signature of `family` exported from `config` (its text decoder's) in this cache mode;
    `UnsupportedArchitectureError` for a static cache the family's layers cannot have."""
    layout = family.cache_layout(config)
    if static_len is not None:
        if not layout.attention_layers:
            raise UnsupportedArchitectureError(
                f"--cache static: {family.model_type} has no attention layer, its states are fixed-size already; "
                "export with the default dynamic cache."
            )
        if any("key" in kinds and len(kinds) > 2 for kinds in map(layout.kinds, range(layout.num_layers))):
            raise UnsupportedArchitectureError(
                f"--cache static is not available for {family.model_type} (layers holding both attention and Mamba state); "
                "export with the default dynamic cache."
            )
    return ExportSignature(family, config, layout, with_past, static_len, logits_to_keep)

