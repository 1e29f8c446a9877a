"""Turn a rewritten copy of the main graph into a variant region.

A producer rewrites a clone of the model with ordinary onnxscript rules; `region_from_rewrite`
compares node signatures (op, inputs and outputs by name) with the original and returns the new
nodes as a body whose inputs and outputs are named after main-graph values. Rewrite rules keep
the names of the values they replace, which is what makes the boundary recoverable.
"""

from __future__ import annotations

import itertools

import onnx_ir as ir

from ...errors import VariantFormatError
from .._model import main_values

__all__ = ["region_from_rewrite"]


def _signature(node: ir.Node) -> tuple:
    return (
        node.domain,
        node.op_type,
        tuple(v.name if v is not None else "" for v in node.inputs),
        tuple(v.name for v in node.outputs),
    )


def region_from_rewrite(original: ir.Model, rewritten: ir.Model, tag: str) -> ir.Graph | None:
    """The nodes of `rewritten` that `original` lacks, as a region graph; None if nothing changed.

    Values the new nodes compute that the original graph also has become the region's outputs
    (the values replaced); values they read from the original become its inputs. Internal values
    are renamed `<tag>/<n>` so they cannot collide with main-graph names when substituted.
    """
    known = {_signature(node) for node in original.graph}
    original_values = main_values(original.graph)
    new_nodes = [node for node in rewritten.graph if _signature(node) not in known]
    if not new_nodes:
        return None
    produced = {v for node in new_nodes for v in node.outputs}
    counter = itertools.count()
    outputs = []
    for value in produced:
        if value.name in original_values and original_values[value.name].producer() is not None:
            outputs.append(value)
        else:
            if any(user.node not in new_nodes for user in value.uses()) or value.is_graph_output():
                raise VariantFormatError(f"Rewrite `{tag}` made value {value.name} that kept nodes read; it cannot be a region.")
            value.name = f"{tag}/{next(counter)}"
    # Region inputs: fresh placeholders for the main-graph values the new nodes read.
    placeholders: dict[str, ir.Value] = {}
    body_nodes = []
    mapping: dict[ir.Value, ir.Value] = {}
    for node in new_nodes:
        inputs = []
        for value in node.inputs:
            if value is None or value in produced:
                inputs.append(mapping.get(value) if value is not None else None)
                continue
            if value.name not in original_values:
                raise VariantFormatError(f"Rewrite `{tag}` reads {value.name}, which the main graph lacks.")
            inputs.append(placeholders.setdefault(value.name, ir.Value(name=value.name)))
        clone = ir.Node(node.domain, node.op_type, inputs, attributes=list(node.attributes.values()),
                        num_outputs=len(node.outputs), name=node.name)
        for old, new in zip(node.outputs, clone.outputs):
            new.name = old.name
            mapping[old] = new
        body_nodes.append(clone)
    body_outputs = [mapping[v] for v in sorted(outputs, key=lambda v: v.name)]
    return ir.Graph(list(placeholders.values()), body_outputs, nodes=body_nodes)
