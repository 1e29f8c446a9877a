"""Rows that join and leave a running batch (continuous batching) on a dynamic cache.

A `DecoderState` keeps one rectangular cache: every row holds the same number of past positions,
rows that started later are left-padded (mask 0 there; positions are cumsum(mask) - 1, so each row
keeps its own). `join` appends the rows of another state (a newcomer prefilled alone): the shorter
side's keys and values are left-padded on the past axis, fixed-size states (conv, ssm, recurrent)
are concatenated as they are. `keep` takes the surviving rows and drops leading past columns that
are padding in every row, so a batch that lost its oldest row stops attending
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


def join(batch: DecoderState, newcomer: DecoderState) -> None:
    """Append `newcomer`'s rows to `batch`, in place (`newcomer` is consumed). Each cache tensor is
    written once into its joined buffer (on CPU `OrtValue.numpy()` is a view, not a copy)."""
    check_joinable(batch)
    a_rows, b_rows = batch.mask.shape[0], newcomer.mask.shape[0]
    length = max(batch.mask.shape[1], newcomer.mask.shape[1])
    values = []
    for spec, a, b in zip(batch.io.cache, batch.cache.values, newcomer.cache.values):
        a, b = a.numpy(), b.numpy()
        if spec.is_state:
            joined = np.concatenate([a, b], axis=0)
        else:  # keys and values: each side right-aligned on the past axis (left padding)
            joined = np.zeros((a_rows + b_rows, *a.shape[1:2], length, *a.shape[3:]), dtype=a.dtype)
            joined[:a_rows, :, length - a.shape[2]:] = a
            joined[a_rows:, :, length - b.shape[2]:] = b
        values.append(ort.OrtValue.ortvalue_from_numpy(joined))
    mask = np.zeros((a_rows + b_rows, length), dtype=batch.mask.dtype)
    mask[:a_rows, length - batch.mask.shape[1]:] = batch.mask
    mask[a_rows:, length - newcomer.mask.shape[1]:] = newcomer.mask
    batch.mask = mask
    batch.cache.values = values
    batch.cache.length = length
    batch.cache.batch_size = a_rows + b_rows


def keep(batch: DecoderState, rows: list[int]) -> None:
    """Keep `rows` (in that order), in place; leading columns padded in every kept row are dropped.
    One copy per cache tensor: the rows and the remaining columns are taken together."""
    check_joinable(batch)
    if not rows:
        raise ValueError("keep() needs at least one row; drop the state instead")
    rows = np.asarray(rows, dtype=np.int64)
    mask = batch.mask[rows]
    filled = mask.any(axis=0)
    drop = int(np.argmax(filled)) if filled.any() else 0
    values = []
    for spec, value in zip(batch.io.cache, batch.cache.values):
        array = value.numpy()
        kept = array[rows] if spec.is_state else array[rows, :, drop:]
        values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(kept)))
    batch.cache.values = values
    batch.mask = np.ascontiguousarray(mask[:, drop:])
    batch.cache.length -= drop
    batch.cache.batch_size = len(rows)
