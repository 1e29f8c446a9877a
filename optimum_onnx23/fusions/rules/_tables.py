"""Helpers the rotary rules share: constant ints, and what a cos/sin table is known to repeat."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..._onnxscript_compat import ir_utils

__all__ = ["ints", "repeat_interleave_source", "pairs_repeated", "halves_repeated"]

# Ops a table passes through without changing what its last axis repeats.
_ELEMENTWISE = {"Cos", "Sin", "Cast", "Identity", "Neg"}


def ints(value: ir.Value | None) -> list[int] | None:
    array = ir_utils.get_numpy_value(value)
    return None if array is None else [int(x) for x in np.asarray(array).reshape(-1)]


def _rank(value: ir.Value) -> int | None:
    return value.shape.rank() if value.shape is not None else None


def repeat_interleave_source(node: ir.Node | None) -> ir.Value | None:
    """The repeated tensor if `node` is torch's `repeat_interleave(y, 2, dim=-1)`:
    Reshape(Expand(Unsqueeze(y, [rank]), [..., 2]), [..., 2 * last])."""
    if node is None or node.op_type != "Reshape":
        return None
    expand = node.inputs[0].producer()
    if expand is None or expand.op_type != "Expand":
        return None
    unsqueeze = expand.inputs[0].producer()
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return None
    source = unsqueeze.inputs[0]
    rank = _rank(source)
    if rank is None or ints(unsqueeze.inputs[1]) not in ([rank], [-1]):
        return None
    target = ints(expand.inputs[1])
    out = expand.outputs[0].shape
    if (target[-1] if target is not None else (out[-1] if out is not None else None)) != 2:
        return None
    return source


def _is_halves_concat(node: ir.Node) -> bool:
    """Concat(f, f) on the last axis: the rotate-half tables' `cat((freqs, freqs), -1)`."""
    if node.op_type != "Concat" or len(node.inputs) != 2 or node.inputs[0] is not node.inputs[1]:
        return False
    rank = _rank(node.outputs[0])
    return rank is not None and node.attributes.get_int("axis", 0) % rank == rank - 1


def _through(value: ir.Value, found, depth: int = 8) -> bool:
    """Whether `found(node)` holds for a producer reached from `value` through ops that keep the
    last axis' repetition: elementwise unary ops, scaling by a scalar (rope's attention_scaling),
    Unsqueeze/Slice/Gather on other axes."""
    producer = value.producer()
    if producer is None or depth == 0:
        return False
    if found(producer):
        return True
    op = producer.op_type
    if op in _ELEMENTWISE:
        return _through(producer.inputs[0], found, depth - 1)
    if op in ("Mul", "Div"):
        return ir_utils.get_singleton_value(producer.inputs[1]) is not None and _through(producer.inputs[0], found, depth - 1)
    rank = _rank(value)
    if op == "Unsqueeze":
        axes = ints(producer.inputs[1])
        if rank is None or axes is None or any(a % rank == rank - 1 for a in axes):
            return False
        return _through(producer.inputs[0], found, depth - 1)
    if op in ("Slice", "Gather"):
        data_rank = _rank(producer.inputs[0])
        if op == "Gather":
            axes = [producer.attributes.get_int("axis", 0)]
        else:
            axes = ints(producer.inputs[3]) if len(producer.inputs) > 3 else None
        if data_rank is None or axes is None or any(a % data_rank == data_rank - 1 for a in axes):
            return False
        return _through(producer.inputs[0], found, depth - 1)
    return False


def pairs_repeated(value: ir.Value) -> bool:
    """Whether `value`'s last axis is known to hold every entry twice in a row (interleaved tables)."""
    return _through(value, lambda node: repeat_interleave_source(node) is not None)


def halves_repeated(value: ir.Value) -> bool:
    """Whether `value`'s last axis is known to be two copies of one half (rotate-half tables)."""
    return _through(value, _is_halves_concat)
