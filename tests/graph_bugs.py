"""Deliberate bugs for exported graphs, to show that checks which pass correct graphs can fail."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["rewire_input", "BUGS"]


def rewire_input(graph: ir.Graph, name: str, op: str, constant: int) -> None:
    """Every consumer of graph input `name` reads `op(name, constant)` instead."""
    value = next(v for v in graph.inputs if v.name == name)
    uses = list(value.uses())
    const = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(constant, np.int64))})
    node = ir.node(op, [value, const.outputs[0]])
    for user, index in uses:
        user.replace_input_with(index, node.outputs[0])
    graph.extend([const, node])
    graph.sort()


# Bugs that move rotary positions by one, or unmask the left padding: small, plausible, wrong.
BUGS = {
    "rotary_positions_off_by_one": lambda graph: rewire_input(graph, "position_ids", "Add", 1),
    "mask_lets_padding_through": lambda graph: rewire_input(graph, "attention_mask", "Max", 1),
}
