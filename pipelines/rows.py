"""Rows that join and leave a running batch (continuous batching) on a dynamic cache.

A `DecoderState` keeps one rectangular cache: every row holds the same number of past positions,
rows that started later are left-padded (mask 0 there; positions are cumsum(mask) - 1, so each row
keeps its own). `join` appends the rows of another state (a newcomer prefilled alone): the shorter
side's keys and values are left-padded on the past axis, fixed-size states (conv, ssm, recurrent)
are concatenated as they are. `keep` gathers the surviving rows on the device and drops leading
past columns that are padding in every row, so a batch that lost its oldest row stops attending
over its positions. Each join or leave copies the batch's cache once, as every decode step already
does inside the fused `Attention` (past + new concatenated).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from optimum_onnx23.errors import InvalidArgumentError

from .state import DecoderState

__all__ = ["join", "keep", "check_joinable"]


def check_joinable(state: DecoderState) -> None:
    if state.io.static:
        raise InvalidArgumentError(
            "Rows joining a running batch need a dynamic cache; this export has a static cache (write_indices), whose "
            "graph writes every row at row 0's position: re-export without --cache static to serve it."
        )
    if state.cache.device != "cpu":
        raise InvalidArgumentError(f"Rows joining a running batch are implemented for CPU sessions, not {state.cache.device}.")


def _pad_past(array: np.ndarray, columns: int) -> np.ndarray:
    if columns == 0:
        return array
    pad = np.zeros((*array.shape[:2], columns, *array.shape[3:]), dtype=array.dtype)
    return np.concatenate([pad, array], axis=2)


def join(batch: DecoderState, newcomer: DecoderState) -> None:
    """Append `newcomer`'s rows to `batch`, in place (`newcomer` is consumed)."""
    check_joinable(batch)
    a_len, b_len = batch.mask.shape[1], newcomer.mask.shape[1]
    length = max(a_len, b_len)
    values = []
    for spec, a, b in zip(batch.io.cache, batch.cache.values, newcomer.cache.values):
        a, b = a.numpy(), b.numpy()
        if not spec.is_state:
            a, b = _pad_past(a, length - a_len), _pad_past(b, length - b_len)
        values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(np.concatenate([a, b], axis=0))))
    masks = [np.pad(m, ((0, 0), (length - m.shape[1], 0))) for m in (batch.mask, newcomer.mask)]
    batch.mask = np.concatenate(masks, axis=0)
    batch.cache.values = values
    batch.cache.length = length
    batch.cache.batch_size = batch.mask.shape[0]


def keep(batch: DecoderState, rows: list[int]) -> None:
    """Keep `rows` (in that order), in place; leading columns padded in every kept row are dropped."""
    check_joinable(batch)
    if not rows:
        raise ValueError("keep() needs at least one row; drop the state instead")
    batch.reorder(np.asarray(rows, dtype=np.int64))
    filled = batch.mask.any(axis=0)
    drop = int(np.argmax(filled)) if filled.any() else 0
    if drop == 0:
        return
    values = []
    for spec, value in zip(batch.io.cache, batch.cache.values):
        array = value.numpy()
        if not spec.is_state:
            array = np.ascontiguousarray(array[:, :, drop:])
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
    batch.cache.values = values
    batch.mask = np.ascontiguousarray(batch.mask[:, drop:])
    batch.cache.length -= drop
