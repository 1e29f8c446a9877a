"""The running rows' KV caches, one row per request, in two layouts the engine can run on.

- `SlotRows` (onnxruntime CPU, decoders whose attention layers all fuse to `Attention`): each row
  owns a slot of fixed `[kv_heads, N, head_dim]` buffers, written in place, and attends over its
  own length only (`serving.slot_graph`). A newcomer is prefilled in a spare slot and copied into
  the first free row when its prompt is through; a row that leaves is replaced by the last row, so
  the running rows are always the first `n` slots and one session call decodes them all.
- `DynamicRows` (every family, every provider the dynamic cache runs on): one rectangular dynamic
  cache, left-padded (`pipelines.rows`). Each step copies the whole batch's past, padding
  included, inside `Attention`; it is the layout for hybrid decoders (conv / SSM states), for
  attention the slot graph cannot express (sliding windows, additive biases) and for providers
  other than CPU.
- `StaticRows` (exports made with `--cache static`): the export's own fixed buffers, standard ops
  only (opset 24 `TensorScatter` + `Attention`), each row written at its own position; attention
  covers all N positions of every row.

`choose_rows` picks: slots where they apply, else the dynamic cache, with a warning naming the
reason (measured in docs/serving.md: slots are 1.7-2.9x faster a step at 16 rows of mixed lengths).
"""

from __future__ import annotations

import logging
import mmap
import os
import warnings
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from optimum_onnx23.contract import WRITE_INDICES
from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.pipelines.modeling import ORTModelForCausalLM
from optimum_onnx23.pipelines.rows import check_joinable, join, keep
from optimum_onnx23.pipelines.state import DecoderState
from optimum_onnx23.variants.runtime import select_for_providers
from optimum_onnx23.variants.select import MAIN

from .last_logits import last_position_logits
from .slot_graph import SEQLENS_K, TOTAL_SEQUENCE_LENGTH, SlotGraphError, to_kv_slots

__all__ = ["KV_CACHE_LAYOUTS", "RowBatch", "DynamicRows", "SlotRows", "StaticRows", "choose_rows", "sliding_windows", "slot_session"]

logger = logging.getLogger(__name__)

KV_CACHE_LAYOUTS = ("auto", "slots", "dynamic")


class RowBatch:
    """What the engine needs from a cache layout. `rows` is the request id of each decoding row,
    in the order `decode` takes and returns them."""

    layout = ""

    def __init__(self) -> None:
        self.rows: list[str] = []

    def prefill(self, request_id: str, tokens: Sequence[int]) -> torch.Tensor:
        """Run the next chunk of `request_id`'s prompt; returns the last position's logits [vocab]."""
        raise NotImplementedError

    def admit(self, request_id: str) -> None:
        """The request whose prompt is through joins the decoding rows (last)."""
        raise NotImplementedError

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        """One token for every row; returns logits [rows, vocab]."""
        raise NotImplementedError

    def remove(self, gone: set[str]) -> None:
        """Drop these requests' rows (and a prefill in progress, if it is one of them)."""
        raise NotImplementedError


class DynamicRows(RowBatch):
    layout = "dynamic"

    def __init__(self, model: ORTModelForCausalLM) -> None:
        super().__init__()
        check_joinable(model.new_state(1))
        self.model = model
        self._batch: DecoderState | None = None
        self._prefill: tuple[str, DecoderState] | None = None

    def prefill(self, request_id: str, tokens: Sequence[int]) -> torch.Tensor:
        if self._prefill is None or self._prefill[0] != request_id:
            self._prefill = (request_id, self.model.new_state(1))
        return self._prefill[1].step(np.asarray([tokens], dtype=np.int64))[0]

    def admit(self, request_id: str) -> None:
        _, state = self._prefill
        self._prefill = None
        if self._batch is None:
            self._batch = state
        else:
            join(self._batch, state)
        self.rows.append(request_id)

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        return self._batch.step(np.asarray(tokens, dtype=np.int64)[:, None])

    def remove(self, gone: set[str]) -> None:
        if self._prefill is not None and self._prefill[0] in gone:
            self._prefill = None
        kept = [row for row, request_id in enumerate(self.rows) if request_id not in gone]
        if len(kept) == len(self.rows):
            return
        if kept:
            keep(self._batch, kept)
        else:
            self._batch = None
        self.rows = [self.rows[row] for row in kept]


class _FixedRows(RowBatch):
    """`max_rows` decoding rows plus a spare one for the prefill, each `max_len` positions long.
    The buffers are numpy arrays that onnxruntime reads and writes in place through OrtValues
    aliasing them, on anonymous memory committed page by page as rows grow (`_lazy_zeros`), so a
    server holds the positions its rows use, not `max_len` for every row. Subclasses say what else
    the graph is fed (`_inputs`)."""

    def __init__(self, model: ORTModelForCausalLM, session: ort.InferenceSession, max_rows: int, max_len: int) -> None:
        super().__init__()
        self.model = model
        self.session = session
        self.max_rows = max_rows
        self.max_len = max_len
        self.buffers = {spec.past: _lazy_zeros((max_rows + 1, spec.shape[0], max_len, spec.shape[2]), spec.dtype) for spec in model.io.cache}
        self.presents = {spec.past: spec.present for spec in model.io.cache}
        self.lengths = np.zeros(max_rows + 1, dtype=np.int64)
        self._spare = max_rows  # the prefill slot
        self._prefilling: str | None = None
        self._bindings: dict[tuple[int, int], tuple[ort.IOBinding, list[ort.OrtValue]]] = {}

    @property
    def kv_bytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.buffers.values())

    def _inputs(self, lengths: np.ndarray, step: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _binding(self, slots: slice) -> ort.IOBinding:
        """One binding per row range, its buffers bound once (OrtValues aliasing numpy views, kept
        alive with it): a step then binds only its few small inputs (60 bindings a step cost
        SmolLM2 ~0.7 ms of Python, 5-8% of an int4 token)."""
        key = (slots.start, slots.stop)
        if key not in self._bindings:
            binding = self.session.io_binding()
            binding.bind_output("logits", "cpu")  # first: outputs[0]
            views = []
            for name, buffer in self.buffers.items():
                view = ort.OrtValue.ortvalue_from_numpy(buffer[slots])
                views.append(view)
                binding.bind_ortvalue_input(name, view)
                binding.bind_ortvalue_output(self.presents[name], view)
            self._bindings[key] = (binding, views)
        return self._bindings[key][0]

    def _run(self, slots: slice, input_ids: np.ndarray) -> np.ndarray:
        lengths = self.lengths[slots]
        step = input_ids.shape[1]
        if int(lengths.max()) + step > self.max_len:
            raise InvalidArgumentError(f"a row would pass the KV buffer length {self.max_len} (--max-model-len)")
        arrays = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "position_ids": lengths[:, None] + np.arange(step, dtype=np.int64)[None, :],  # no padding: a row's slots are its positions
            **self._inputs(lengths, step),
        }
        binding = self._binding(slots)
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output("logits", "cpu")  # rebinding keeps its place; a new shape each prefill chunk
        self.session.run_with_iobinding(binding)
        self.lengths[slots] += step
        return binding.get_outputs()[0].numpy()[:, -1, :]

    def prefill(self, request_id: str, tokens: Sequence[int]) -> torch.Tensor:
        if self._prefilling != request_id:
            self._prefilling = request_id
            self.lengths[self._spare] = 0
        logits = self._run(slice(self._spare, self._spare + 1), np.asarray([tokens], dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(logits[0], dtype=np.float32))

    def admit(self, request_id: str) -> None:
        row = len(self.rows)
        if row >= self.max_rows:
            raise RuntimeError(f"no free slot: {row} rows run (--max-num-seqs {self.max_rows})")
        self._move(self._spare, row)
        self._prefilling = None
        self.rows.append(request_id)

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        logits = self._run(slice(0, len(self.rows)), np.asarray(tokens, dtype=np.int64)[:, None])
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))

    def remove(self, gone: set[str]) -> None:
        if self._prefilling in gone:
            self._prefilling = None
        for row in sorted((i for i, request_id in enumerate(self.rows) if request_id in gone), reverse=True):
            last = len(self.rows) - 1
            if row != last:
                self._move(last, row)
                self.rows[row] = self.rows[last]
            self.rows.pop()

    def _move(self, source: int, target: int) -> None:
        length = int(self.lengths[source])
        for buffer in self.buffers.values():
            buffer[target, :, :length] = buffer[source, :, :length]
        self.lengths[target] = length


class SlotRows(_FixedRows):
    """KV slots through GroupQueryAttention (`serving.slot_graph`): each row attends over its own
    length only."""

    layout = "slots"

    def __init__(self, model: ORTModelForCausalLM, max_rows: int, max_len: int) -> None:
        super().__init__(model, slot_session(model), max_rows, max_len)

    def _inputs(self, lengths: np.ndarray, step: int) -> dict[str, np.ndarray]:
        seqlens = (lengths + step - 1).astype(np.int32)
        return {
            SEQLENS_K: seqlens,
            TOTAL_SEQUENCE_LENGTH: np.array(int(seqlens.max()) + 1, dtype=np.int32),
        }


class StaticRows(_FixedRows):
    """A static-cache export's own graph (`--cache static`: TensorScatter at `write_indices`,
    opset-24 standard ops), each row written at its own position.

    The graph writes every row at its own `write_indices[b]`, but bounds causality with row 0's
    (`exporters.tracing.export_cache.WriteLayer`): in a decode step (one new token) that bound
    is exact for the longest row and looser for the others, whose slots past their length the
    attention mask covers. So row 0 is kept the longest (a swap when a longer row joins or row 0
    leaves), and a prefill runs alone. Attention computes over all N slots of every row."""

    layout = "static"

    def __init__(self, model: ORTModelForCausalLM, max_rows: int) -> None:
        super().__init__(model, model.session, max_rows, model.io.max_cache_len)

    def _inputs(self, lengths: np.ndarray, step: int) -> dict[str, np.ndarray]:
        filled = lengths + step
        return {
            "attention_mask": (np.arange(self.max_len)[None, :] < filled[:, None]).astype(np.int64),
            WRITE_INDICES: lengths.copy(),
        }

    def admit(self, request_id: str) -> None:
        super().admit(request_id)
        self._longest_first()

    def remove(self, gone: set[str]) -> None:
        super().remove(gone)
        self._longest_first()

    def _longest_first(self) -> None:
        if len(self.rows) < 2:
            return
        longest = int(np.argmax(self.lengths[: len(self.rows)]))
        if longest == 0 or self.lengths[longest] == self.lengths[0]:
            return
        short, long = int(self.lengths[0]), int(self.lengths[longest])
        for buffer in self.buffers.values():  # not through the spare row: a prefill may be under way there
            kept = buffer[0, :, :short].copy()
            buffer[0, :, :long] = buffer[longest, :, :long]
            buffer[longest, :, :short] = kept
        self.lengths[[0, longest]] = long, short
        self.rows[0], self.rows[longest] = self.rows[longest], self.rows[0]


def _lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros on their own anonymous mapping, committed 4 KiB at a time when first written. Not
    `np.zeros`: numpy asks for transparent huge pages on large arrays, and a row's heads sit
    `max_len * head_dim` apart (2 MiB at 8192 x 64 fp32), so a row's first tokens committed a
    huge page per head: its whole length, 377 MB for one SmolLM2 row at 8192 positions, about
    0.9 s of page faults on first use (measured here; 26 ms for the 14 MB 300 tokens need)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype, count=int(np.prod(shape))).reshape(shape)


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def sliding_windows(config, num_layers: int) -> dict[int, int]:
    """Layer index -> sliding window, as transformers' configs state it: `layer_types` when present
    ("sliding_attention" layers), else `sliding_window` on every layer unless `use_sliding_window`
    is false."""
    config = getattr(config, "get_text_config", lambda: config)()
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or []
    other = sorted({kind for kind in types if kind not in ("full_attention", "sliding_attention")})
    if other:
        raise SlotGraphError(f"layer type(s) {', '.join(other)} have masks KV slots do not express")
    if not window:
        if "sliding_attention" in types:
            raise SlotGraphError("sliding_attention layers without a sliding_window in the config")
        return {}
    if types:
        return {i: window for i, kind in enumerate(types) if kind == "sliding_attention"}
    if getattr(config, "use_sliding_window", True) is False:
        return {}
    return dict.fromkeys(range(num_layers), window)


def slot_session(model: ORTModelForCausalLM) -> ort.InferenceSession:
    """A session on the graph `model`'s session runs (the same backend variant), rewritten for KV
    slots. Raises `SlotGraphError` (the reason) when the graph or the provider does not allow it."""
    if model.providers[0] != "CPUExecutionProvider":
        raise SlotGraphError(f"KV slots run on onnxruntime's CPU provider, not {model.providers[0]}")
    if model.io.static:
        raise SlotGraphError("the export has a static cache (write_indices): it is served on its own buffers")
    if model.io.hybrid:
        raise SlotGraphError("the decoder has recurrent or convolution states beside its KV cache")
    source = model.model_file or model.model_path
    if source is None:
        raise SlotGraphError("the model was not loaded from a file")
    selected, _ = select_for_providers(source, model.providers, model.variant or MAIN)
    graph = ir.serde.deserialize_model(selected.proto())
    to_kv_slots(graph, sliding_windows(model.config, model.io.num_layers))
    unchanged = last_position_logits(graph)
    if unchanged:
        logger.info("serving graph keeps logits for every position: %s", unchanged)
    data = ir.serde.serialize_model(graph).SerializeToString()
    return ort.InferenceSession(data, selected.session_options(), providers=model.providers)


def choose_rows(model: ORTModelForCausalLM, layout: str, max_rows: int, max_len: int | None) -> RowBatch:
    """The row layout for `layout` (`KV_CACHE_LAYOUTS`). "auto": slots where they apply, else the
    dynamic cache with a warning that names why; "slots" refuses with that reason instead."""
    if layout not in KV_CACHE_LAYOUTS:
        raise InvalidArgumentError(f"--kv-cache {layout!r} is not one of: {', '.join(KV_CACHE_LAYOUTS)}.")
    if model.io.static:
        if layout != "auto":
            raise InvalidArgumentError(
                f"--kv-cache {layout}: this export has a static cache, served on its own buffers; drop --kv-cache "
                "(or re-export without --cache static)."
            )
        if model.providers[0] != "CPUExecutionProvider" or model.io.hybrid:
            raise InvalidArgumentError(
                "Static-cache exports are served on onnxruntime's CPU provider, for decoders without recurrent or "
                "convolution states; re-export without --cache static to serve this one."
            )
        if sliding_windows(model.config, model.io.num_layers):
            raise InvalidArgumentError(
                "This static-cache export has sliding-window layers, whose window the graph places at row 0's position "
                "for every row; re-export without --cache static to serve it."
            )
        return StaticRows(model, max_rows)
    if layout != "dynamic":
        try:
            if max_len is None:
                raise SlotGraphError("the model's context length is unknown: pass --max-model-len")
            needed = (max_rows + 1) * max_len * sum(
                int(np.prod([d for d in spec.shape if d is not None])) * np.dtype(spec.dtype).itemsize for spec in model.io.cache
            )
            if needed > _memory_bytes() // 2:
                raise SlotGraphError(
                    f"{max_rows + 1} rows x {max_len} positions need {needed / 1e9:.1f} GB of KV buffers, over half this "
                    "machine's memory: lower --max-model-len or --max-num-seqs"
                )
            return SlotRows(model, max_rows, max_len)
        except SlotGraphError as error:
            if layout == "slots":
                raise InvalidArgumentError(f"--kv-cache slots: {error}; use --kv-cache dynamic.") from None
            message = f"KV slots do not apply ({error}); serving on the dynamic cache (slower past 8 rows of mixed lengths)."
            logger.warning(message)
            warnings.warn(message, stacklevel=2)
    return DynamicRows(model)
