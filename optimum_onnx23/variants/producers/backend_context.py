"""`backend-context`: an interpretable stand-in for a precompiled blob, in the spirit of
onnxruntime's EPContext, that keeps the original subgraph as its fallback.

The region (by default the final norm and the lm_head, i.e. everything between the last hidden
state and `logits`) is called through a helper function `BackendContext` whose *body is the
original subgraph*: a runtime that has the backend recognizes the call by its `source` attribute
and runs `ep_cache_context` instead; any other runtime inlines the body and computes the same
values as the main graph. Attributes follow EPContext: `source`, `embed_mode`, `ep_cache_context`,
`main_context`, `ep_sdk_version`, `partition_name`, `notes`, plus `compatibility` (what
onnxruntime keeps in `ep_compatibility_info.<EP>`).
"""

from __future__ import annotations

import hashlib
import json

import onnx_ir as ir

from ...errors import VariantFormatError
from ..format import helper_domain
from .spec import VariantSpec

__all__ = ["NAME", "CONTEXT_OP", "produce", "region_nodes"]

NAME = "backend-context"
CONTEXT_OP = "BackendContext"
ATTRIBUTES = ("source", "embed_mode", "ep_cache_context", "main_context", "ep_sdk_version", "partition_name", "notes", "compatibility")


def region_nodes(graph: ir.Graph, inputs: list[ir.Value], outputs: list[ir.Value]) -> list[ir.Node]:
    """The nodes on a path from `inputs` to `outputs`, in graph order. Values they read from
    elsewhere (weights, shapes computed from the graph inputs) become inputs of the region; every
    value they compute that other nodes read must be among `outputs` (the region is closed)."""
    downstream: set[ir.Node] = set()
    stack = list(inputs)
    while stack:
        for use in stack.pop().uses():
            if use.node not in downstream:
                downstream.add(use.node)
                stack.extend(use.node.outputs)
    nodes: set[ir.Node] = set()
    stack = list(outputs)
    while stack:
        node = stack.pop().producer()
        if node is None or node in nodes or node not in downstream:
            continue
        nodes.add(node)
        stack.extend(v for v in node.inputs if v is not None)
    if not nodes:
        raise VariantFormatError("backend-context region is empty: the outputs do not depend on the inputs.")
    for node in nodes:
        for value in node.outputs:
            if value not in outputs and (value.is_graph_output() or any(u.node not in nodes for u in value.uses())):
                raise VariantFormatError(
                    f"backend-context region is not closed: {value.name} is read outside it; add it to the outputs."
                )
    return [node for node in graph if node in nodes]


def _default_region(graph: ir.Graph) -> tuple[list[ir.Value], list[ir.Value]]:
    logits = next((v for v in graph.outputs if v.name == "logits"), graph.outputs[0])
    # Walk back from the logits to the last normalization: its data input starts the region.
    stack, seen = [logits], set()
    while stack:
        node = stack.pop().producer()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.op_type in ("RMSNormalization", "LayerNormalization", "SimplifiedLayerNormalization"):
            return [node.inputs[0]], [logits]
        stack.extend(v for v in node.inputs if v is not None and not v.is_initializer())
    raise VariantFormatError("backend-context: no normalization before the logits; pass the region explicitly.")


def produce(
    model: ir.Model,
    source: str = "QNNExecutionProvider",
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
) -> VariantSpec:
    from .._model import main_values

    graph = model.graph
    if inputs is None or outputs is None:
        region_in, region_out = _default_region(graph)
    else:
        values = main_values(graph)
        missing = [n for n in [*inputs, *outputs] if n not in values]
        if missing:
            raise VariantFormatError(f"backend-context: the main graph has no value {missing[0]}.")
        region_in, region_out = [values[n] for n in inputs], [values[n] for n in outputs]
    nodes = region_nodes(graph, region_in, region_out)
    produced = {v for n in nodes for v in n.outputs}
    consumed = []
    for node in nodes:
        for value in node.inputs:
            if value is not None and value not in produced and value not in consumed:
                consumed.append(value)

    # The fallback: the original subgraph, copied into the helper function (weights come in as inputs).
    fallback_inputs = {v: ir.Value(name=v.name) for v in consumed}
    mapping = dict(fallback_inputs)
    fallback_nodes = []
    for node in nodes:
        clone = ir.Node(node.domain, node.op_type, [mapping.get(v) if v is not None else None for v in node.inputs],
                        attributes=list(node.attributes.values()), num_outputs=len(node.outputs), name=node.name)
        for old, new in zip(node.outputs, clone.outputs):
            new.name = old.name
            mapping[old] = new
        fallback_nodes.append(clone)
    fallback = ir.Graph(list(fallback_inputs.values()), [mapping[v] for v in region_out], nodes=fallback_nodes,
                        opset_imports=dict(model.opset_imports))
    region_hash = hashlib.sha256(ir.serde.serialize_graph(fallback).SerializeToString(deterministic=True)).hexdigest()
    helper = ir.Function(helper_domain(NAME), CONTEXT_OP, graph=fallback,
                         attributes=[ir.Attr(name, ir.AttributeType.STRING, None) for name in ATTRIBUTES if name not in ("embed_mode", "main_context")]
                         + [ir.Attr(name, ir.AttributeType.INT, None) for name in ("embed_mode", "main_context")])
    compatibility = f"optimum-onnx23-stand-in;format=1;region={region_hash[:16]}"
    # The "compiled" payload a real backend would emit; here, an interpretable description of the region.
    payload = json.dumps({"format": "optimum-onnx23-stand-in/1", "region_sha256": region_hash,
                          "ops": sorted({n.op_type for n in nodes}), "outputs": [v.name for v in region_out]})
    call_inputs = [ir.Value(name=v.name) for v in consumed]
    call = ir.Node(helper_domain(NAME), CONTEXT_OP, call_inputs, attributes=[
        ir.AttrString("source", source), ir.AttrInt64("embed_mode", 1), ir.AttrString("ep_cache_context", payload),
        ir.AttrInt64("main_context", 1), ir.AttrString("ep_sdk_version", "none"), ir.AttrString("partition_name", "lm_head"),
        ir.AttrString("notes", "stand-in: the body of BackendContext is the original subgraph"),
        ir.AttrString("compatibility", compatibility),
    ], num_outputs=len(region_out), name="backend_context_0")
    for old, new in zip(region_out, call.outputs):
        new.name = old.name
    body = ir.Graph(call_inputs, list(call.outputs), nodes=[call])
    return VariantSpec(
        name=NAME,
        body=body,
        providers=[source],
        opset_imports={"": model.opset_imports.get("", 23)},
        helpers=[helper],
        priority=40,
        description=f"{len(nodes)} nodes ({', '.join(v.name for v in region_out)}) behind a {CONTEXT_OP} call for {source}",
        tolerance="fallback is the original subgraph: bit-identical on runtimes without the backend",
    )
