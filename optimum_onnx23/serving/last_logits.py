"""The serving graph computes logits for the last position only.

Why: the engine samples from a row's last position and nothing else; a prefill chunk of S tokens
would otherwise run the vocabulary projection S times (SmolLM2: 28 M of its 135 M weights, about
a fifth of a prefill token's work, and an `[1, S, 49152]` output to copy).

Guarantees: the projection's data input is sliced to its last position (`Slice(axis=1, -1:)`)
when the path from the `logits` output back to the projection (MatMul, MatMulNBits, Gemm) runs
through per-position ops only (element-wise with constants, casts, softcap's Tanh); the `logits`
output becomes `[B, 1, vocab]` with the values of the last position of the full graph. Otherwise
nothing changes and the reason is returned.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimum_onnx23.contract import LOGITS

__all__ = ["last_position_logits"]

_PROJECTIONS = {("", "MatMul"), ("", "Gemm"), ("com.microsoft", "MatMulNBits")}
_PER_POSITION = {"Cast", "Tanh", "Mul", "Div", "Add", "Sub", "Identity"}


def last_position_logits(model: ir.Model) -> str | None:
    """Slice the vocabulary projection's input to the last position; returns None when done, else
    why the graph was left as it is."""
    graph = model.graph
    logits = next((value for value in graph.outputs if value.name == LOGITS), None)
    if logits is None:
        return "no logits output"
    value = logits
    while True:
        node = value.producer()
        if node is None:
            return "logits do not come from a projection"
        if (node.domain, node.op_type) in _PROJECTIONS:
            break
        if node.op_type not in _PER_POSITION:
            return f"logits pass through {node.op_type}, not a per-position op"
        # Follow the one input that is not a constant (the other operand of Mul/Add/... must be).
        varying = [v for v in node.inputs if v is not None and ir.convenience.get_const_tensor(v) is None]
        if len(varying) != 1:
            return f"{node.op_type} before the logits has {len(varying)} non-constant inputs"
        value = varying[0]
    hidden = node.inputs[0]
    if hidden.shape is not None and hidden.shape.rank() != 3:
        return "the projection's input is not [batch, sequence, hidden]"
    bounds = []
    for name, bound in (("starts", -1), ("ends", np.iinfo(np.int64).max), ("axes", 1)):
        bounds.append(ir.Value(name=f"last_position_{name}", const_value=ir.tensor(np.array([bound], dtype=np.int64))))
        graph.register_initializer(bounds[-1])
    last = ir.node("Slice", [hidden, *bounds], name="last_position")
    last.outputs[0].name = f"{hidden.name}_last"
    graph.insert_before(node, last)
    node.replace_input_with(0, last.outputs[0])
    logits.shape = ir.Shape([logits.shape[0] if logits.shape else None, 1, logits.shape[2] if logits.shape else None])
    return None

