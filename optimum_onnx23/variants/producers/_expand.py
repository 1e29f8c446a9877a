"""Replace standard ops by the bodies ONNX itself defines for them, folded for the node's shapes.

`expand_ops(model, ops)` rewrites, in place, every main-graph node whose op is in `ops` into the
op's ONNX function body (`onnx.defs` context-dependent function, specialised by onnx for the
node's attributes and input types), then constant-folds that body for the node's known input
shapes (the RMSNormalization body computes its ReduceMean axes from `Size(Shape(X))` at run time;
the Attention body reads head counts and sizes with `Shape`) and drops `Split` outputs of length
zero (the RotaryEmbedding body splits off a zero-width "not rotated" part when the whole head
rotates; some runtimes refuse empty tensors). Each body is folded on its own small graph, so no
node outside the expanded ones changes, and the replaced values keep their names: the rewritten
model diffs against the original into a variant region (`_diff.region_from_rewrite`).

Guarantees: the expansion computes what the op's ONNX specification computes (the body is the
specification's own); folded constants become `Constant` nodes (the region owns no weights).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

import numpy as np
import onnx
import onnx_ir as ir

from ...errors import VariantNotApplicableError

__all__ = ["expand_ops", "newer_ops", "function_body"]


def newer_ops(graph: ir.Graph, opset: int) -> list[str]:
    """Standard ops of `graph`, subgraphs (If/Loop/Scan bodies) included, that opset `opset` does
    not define (e.g. the opset-23 GenAI ops for 21)."""
    found = set()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.domain in ("", "ai.onnx"):
            try:
                onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                found.add(node.op_type)
    return sorted(found)


def _needed(value: ir.Value | None) -> bool:
    return value is not None and bool(value.name) and (bool(value.uses()) or value.is_graph_output())


def _type_proto(value: ir.Value | None) -> onnx.TypeProto:
    proto = onnx.TypeProto()
    if value is None:
        return proto
    if value.type is None:
        raise VariantNotApplicableError(f"value {value.name} has no known type after shape inference; cannot expand its consumer.")
    ir.serde.serialize_type_into(proto, value.type)
    if value.shape is not None:
        ir.serde.serialize_shape_into(proto, value.shape)
    return proto


def function_body(node: ir.Node, opset: int) -> ir.Model:
    """The node's ONNX function body as a standalone model whose inputs carry the node's input
    types and shapes (absent optional inputs and outputs left out)."""
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    types = [_type_proto(v) for v in node.inputs]
    if schema.has_context_dependent_function:
        version = max(v for v in schema.context_dependent_function_opset_versions if v <= opset)
        raw = schema.get_context_dependent_function_with_opset_version(
            version, ir.serde.serialize_node(node).SerializeToString(), [t.SerializeToString() for t in types]
        )
    elif schema.has_function:
        version = max(v for v in schema.function_opset_versions if v <= opset)
        raw = schema.get_function_with_opset_version(version)
    else:
        raise VariantNotApplicableError(f"{node.op_type} has no ONNX function body to expand.")
    function = onnx.FunctionProto()
    function.ParseFromString(raw)
    _bind_attributes(function, node, schema)
    inputs = [onnx.helper.make_value_info(name, t) for name, t, v in zip(function.input, types, node.inputs) if v is not None]
    outputs = [onnx.helper.make_value_info(name, onnx.TypeProto()) for name, v in zip(function.output, node.outputs) if _needed(v)]
    graph = onnx.helper.make_graph(list(function.node), node.op_type, inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=list(function.opset_import), ir_version=10)
    return ir.serde.deserialize_model(model)


def _bind_attributes(function: onnx.FunctionProto, node: ir.Node, schema) -> None:
    """A plain function body refers to the node's attributes (`ref_attr_name`, e.g. SwiGLU's and
    Swish's `alpha`): each reference takes the node's value, else the schema's default; one with
    neither is left out, as the specification reads an absent attribute."""
    given = {a.name: a for a in ir.serde.serialize_node(node).attribute}
    for name, spec in schema.attributes.items():
        if name not in given and spec.default_value.type != onnx.AttributeProto.UNDEFINED:
            given[name] = spec.default_value
    for body_node in function.node:
        bound = []
        for attribute in body_node.attribute:
            if not attribute.ref_attr_name:
                bound.append(attribute)
            elif attribute.ref_attr_name in given:
                value = onnx.AttributeProto()
                value.CopyFrom(given[attribute.ref_attr_name])
                value.name = attribute.name
                bound.append(value)
        del body_node.attribute[:]
        body_node.attribute.extend(bound)


def _drop_empty_split_outputs(graph: ir.Graph) -> int:
    """`Split` outputs of constant length 0 that nothing reads are removed; a Split left with one
    output (the whole axis) is replaced by its input. Returns how many outputs were removed."""
    removed = 0
    for node in list(graph):
        if node.op_type != "Split" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        sizes = ir.convenience.get_const_tensor(node.inputs[1])
        if sizes is None:
            continue
        sizes = sizes.numpy().tolist()
        empty = [i for i, size in enumerate(sizes) if size == 0 and not node.outputs[i].uses() and not node.outputs[i].is_graph_output()]
        if not empty:
            continue
        kept = [i for i in range(len(sizes)) if i not in empty]
        if len(kept) == 1:
            node.outputs[kept[0]].replace_all_uses_with(node.inputs[0], replace_graph_outputs=True)
            graph.remove(node, safe=True)
        else:
            lengths = ir.node("Constant", [], attributes={"value": ir.tensor(np.array([sizes[i] for i in kept], dtype=np.int64))})
            split = ir.Node("", "Split", [node.inputs[0], lengths.outputs[0]], attributes=list(node.attributes.values()),
                            num_outputs=len(kept), name=node.name)
            for new, i in zip(split.outputs, kept):
                old = node.outputs[i]
                new.type, new.shape = old.type, old.shape
                old.replace_all_uses_with(new, replace_graph_outputs=True)
            graph.insert_before(node, [lengths, split])
            graph.remove(node, safe=True)
        removed += len(empty)
    return removed


def _fold(body: ir.Model) -> int:
    """Constant-fold the body for its input shapes; returns the zero-length Split outputs dropped."""
    import onnxscript.optimizer

    onnxscript.optimizer.optimize(body, num_iterations=2, onnx_shape_inference=True)
    dropped = _drop_empty_split_outputs(body.graph)
    if dropped:
        onnxscript.optimizer.optimize(body, num_iterations=1, onnx_shape_inference=True)
    # Folded constants are initializers of the small graph: as Constant nodes they travel with the body.
    for name, value in list(body.graph.initializers.items()):
        constant = ir.node("Constant", [], attributes={"value": value.const_value})
        constant.outputs[0].type, constant.outputs[0].shape = value.type, value.shape
        value.replace_all_uses_with(constant.outputs[0], replace_graph_outputs=True)
        body.graph.initializers.pop(name)
        if len(body.graph):
            body.graph.insert_before(body.graph[0], constant)
        else:
            body.graph.append(constant)
        constant.outputs[0].name = name
    return dropped


def _splice(graph: ir.Graph, node: ir.Node, body: ir.Model, prefix: str) -> None:
    """Put `body`'s nodes in place of `node`: its inputs become the node's inputs, its outputs take
    over the node's outputs and their names; internal values are renamed under `prefix`."""
    present = [v for v in node.inputs if v is not None]
    for formal, actual in zip(list(body.graph.inputs), present):
        formal.replace_all_uses_with(actual)
    wanted = [v for v in node.outputs if _needed(v)]
    nodes = list(body.graph)
    results = list(body.graph.outputs)
    body.graph.outputs.clear()
    for n in nodes:
        body.graph.remove(n)
    body.graph.inputs.clear()
    for n in nodes:
        for value in n.outputs:
            value.name = f"{prefix}/{value.name}"
    for old, new in zip(wanted, results):
        if new.producer() is None or new.producer() not in nodes:  # the body passes an input straight through
            identity = ir.node("Identity", [new])
            nodes.append(identity)
            new = identity.outputs[0]
        name = old.name
        new.type, new.shape = old.type, old.shape
        old.name = f"{name}__expanded"
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        new.name = name
    graph.insert_before(node, nodes)
    graph.remove(node, safe=True)


def expand_ops(model: ir.Model, ops: Collection[str]) -> Counter:
    """Expand, in place, every standard-domain node of `model.graph` (not of its subgraphs: no
    export puts these ops there; `newer_ops` still sees them, so a producer refuses such a graph)
    whose op is in `ops`; returns
    how many of each op were expanded (and `Split outputs dropped`). The model's value types must be
    known (run `ShapeInferencePass` first)."""
    opset = model.opset_imports.get("", 23)
    counts: Counter = Counter()
    folded: dict[bytes, tuple[ir.Model, int]] = {}  # one fold per (op, attributes, input types): 30 layers share a few
    for index, node in enumerate(list(model.graph)):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ops:
            continue
        key = _signature(node)
        if key not in folded:
            body = function_body(node, opset)
            folded[key] = body, _fold(body)
        template, dropped = folded[key]
        counts["Split outputs dropped"] += dropped
        _splice(model.graph, node, template.clone(), f"{node.name or node.op_type}#{index}")
        counts[node.op_type] += 1
    return counts


def _signature(node: ir.Node) -> bytes:
    """What the folded body depends on: the op, its attributes, which inputs and outputs are
    present, and the input types and shapes (not the value names)."""
    proto = ir.serde.serialize_node(node)
    proto.ClearField("name")
    del proto.input[:]
    del proto.output[:]
    parts = [proto.SerializeToString(deterministic=True)]
    parts += [_type_proto(v).SerializeToString(deterministic=True) for v in node.inputs]
    parts.append(bytes(_needed(v) for v in node.outputs))
    return b"\x00|".join(parts)
