"""Which state inputs may share their buffer with the matching output (input/output aliasing).

A runtime may bind one buffer as both `past_X` and `present_X` when every read of `past_X`
happens before `present_X` is written. This module proves it from the graph alone:

- `present_X` is produced by a node P that does not read `past_X` itself (P writes its output
  while it reads its inputs);
- every node reading `past_X`, directly or through a view of it (Reshape, Identity, Squeeze,
  Unsqueeze, Flatten: onnxruntime may alias these to their input), is an ancestor of P, so it
  has run before P starts (Shape and Size read the dims only and are not readers);
- none of those readers is a control-flow node (Scan, Loop, If): their bodies may read the
  initial value after writing the final one into the same buffer (onnxruntime's Scan writes its
  last iteration's state straight into the output).

Guarantee: `inplace_safe_states` returns only inputs satisfying all three; anything it cannot
prove is left out (the runtime then binds a fresh output, as for a dynamic cache).
"""

from __future__ import annotations

from typing import Iterable

import onnx_ir as ir

__all__ = ["inplace_safe_states"]

_VIEWS = frozenset({"Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"})
_METADATA_ONLY = frozenset({"Shape", "Size"})  # read the dims, never the data


def _readers(value: ir.Value) -> list[ir.Node]:
    """Nodes reading `value` or a view of it (the views included)."""
    out, stack = [], [value]
    while stack:
        for node, _ in stack.pop().uses():
            if node.op_type in _METADATA_ONLY and node.domain in ("", "ai.onnx"):
                continue
            out.append(node)
            if node.op_type in _VIEWS and node.domain in ("", "ai.onnx"):
                stack.extend(node.outputs)
    return out


def _ancestors(node: ir.Node) -> set[int]:
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        for value in current.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) not in seen:
                seen.add(id(producer))
                stack.append(producer)
    return seen


def inplace_safe_states(model: ir.Model, pairs: Iterable[tuple[str, str]]) -> list[str]:
    """The `past` names among `pairs` ((past input, present output) names) whose buffer can be the
    present's."""
    inputs = {v.name: v for v in model.graph.inputs}
    outputs = {v.name: v for v in model.graph.outputs}
    safe = []
    for past_name, present_name in pairs:
        past, present = inputs.get(past_name), outputs.get(present_name)
        if past is None or present is None or present.is_graph_input():
            continue
        producer = present.producer()
        if producer is None or any(v is past for v in producer.inputs):
            continue
        readers = _readers(past)
        if any(any(a.type == ir.AttributeType.GRAPH or a.type == ir.AttributeType.GRAPHS for a in n.attributes.values()) for n in readers):
            continue
        ancestors = _ancestors(producer)
        if all(id(n) in ancestors for n in readers):
            safe.append(past_name)
    return safe
