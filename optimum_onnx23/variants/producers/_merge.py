"""Merge region bodies into one variant body (the regions must replace disjoint values)."""

from __future__ import annotations

import onnx_ir as ir

from ...errors import VariantFormatError

__all__ = ["merge_bodies"]


def merge_bodies(*bodies: ir.Graph | None) -> ir.Graph:
    """One body computing every output of `bodies`; inputs with the same name become one input, and
    an input that another region replaces reads that region's output instead."""
    inputs: dict[str, ir.Value] = {}
    outputs: list[ir.Value] = []
    nodes: list[ir.Node] = []
    for body in bodies:
        if body is None:
            continue
        for value in body.inputs:
            shared = inputs.setdefault(value.name, value)
            if shared is not value:
                value.replace_all_uses_with(shared)
        if {v.name for v in outputs} & {v.name for v in body.outputs}:
            raise VariantFormatError("Merged regions replace the same value twice; regions of one variant must be disjoint.")
        outputs.extend(body.outputs)
        for node in list(body):
            body.remove(node)
            nodes.append(node)
        body.inputs.clear()  # release the values: a value belongs to one graph
        body.outputs.clear()
    # A value one region replaces and another reads: the reader takes the replacement.
    produced = {v.name: v for v in outputs}
    for name in [n for n in inputs if n in produced]:
        inputs.pop(name).replace_all_uses_with(produced[name])
    return ir.Graph(list(inputs.values()), outputs, nodes=nodes)
