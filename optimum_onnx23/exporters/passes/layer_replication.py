"""Trace four decoder layers, then repeat the last one in the ONNX graph for the others.

torch.export spends ~2 s per decoder layer, mostly on symbolic-shape bookkeeping (SmolLM-135M-
shaped Llama on 2 cores: ~57 s for 30 layers, 13 s for 4 layers plus the growing). When every layer is the same computation, a layer's graph
differs from the one before only by its weights and its cache I/O, so tracing 4 layers and
cloning the last gives the graph a full trace gives, in a fraction of the time. (Layer 0 may
compute things later layers reuse; layers 2 and 3 are compared, each against its predecessor.)

Guarantees:
- Only used when the config declares no per-layer differences (every per-layer list such as
  `layer_types` or `no_rope_layers` holds one value) and the traced layers 2 and 3 are the same
  graph node for node (op, attributes, and where each input comes from). Otherwise `plan`
  returns False or `replicate` None, and the caller traces every layer.
- Control flow (the `If` of MoE layers) is compared and cloned with its subgraphs: a subgraph
  node's input is either computed inside the subgraph or read like any other input of its layer.
- Clone k reads layer k's own weights (the PyTorch parameters, never copied; with `--streamed`,
  lazy tensors read from the checkpoint when the graph is saved), its own
  `past_key_values.k.*` inputs and writes `present.k.*`; everything layers share (masks, rotary
  tables, constants) is shared. The export's validation against the full PyTorch model then
  checks the result like any other trace.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import re
from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterator

import onnx_ir as ir
import torch

from ...contract import CACHE_NAMES

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from ..tracing.streamed import StreamedWeights

__all__ = ["TRACED_LAYERS", "decoder_layers", "plan", "truncated_model", "replicate"]

logger = logging.getLogger(__name__)

TRACED_LAYERS = 4
# "past_key_values." and "present.": what the contract's key/value names start with before the layer index.
_KV_IO_PREFIXES = tuple(template.split("{i}")[0] for template in CACHE_NAMES["key"])


class _NotReplicable(Exception):
    pass


def plan(config: PretrainedConfig, num_layers: int, wrapper: torch.nn.Module | None = None) -> bool:
    """Whether `config` (a transformers config of `num_layers` layers), and `wrapper`'s model if
    given (its layers must sit in one ModuleList), can be traced shallow."""
    if num_layers <= TRACED_LAYERS:
        return False
    if wrapper is not None:
        try:
            _decoder_layers(wrapper, num_layers)
        except _NotReplicable as reason:
            logger.info("Tracing all %d layers: %s.", num_layers, reason)
            return False
    for name, value in config.to_dict().items():
        if isinstance(value, (list, tuple)) and len(value) == num_layers and len({repr(v) for v in value}) > 1:
            logger.info("Tracing all %d layers: `%s` differs between layers.", num_layers, name)
            return False
    return True


def _decoder_layers(wrapper: torch.nn.Module, num_layers: int) -> tuple[torch.nn.Module, str, str]:
    """The module holding the decoder layers, the attribute (`layers`, gpt2's `h`), and its path
    from `wrapper` (which is how weights and torch's node scopes are named)."""
    for path, module in wrapper.named_modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == num_layers:
                return module, name, f"{path}.{name}" if path else name
    raise _NotReplicable(f"{type(wrapper.model).__name__} keeps no list of its {num_layers} layers")


def decoder_layers(wrapper: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList | None:
    """The ModuleList of `wrapper`'s decoder layers; None if the model keeps none."""
    try:
        owner, attribute, _ = _decoder_layers(wrapper, num_layers)
    except _NotReplicable:
        return None
    return getattr(owner, attribute)


@contextlib.contextmanager
def truncated_model(wrapper: torch.nn.Module, config: PretrainedConfig, num_layers: int) -> Iterator[None]:
    """Temporarily make `wrapper`'s model (and its config) hold its first TRACED_LAYERS layers."""
    owner, attribute, _ = _decoder_layers(wrapper, num_layers)
    layers = getattr(owner, attribute)
    saved = {name: value for name, value in vars(config).items() if isinstance(value, list) and len(value) == num_layers}
    setattr(owner, attribute, torch.nn.ModuleList(list(layers)[:TRACED_LAYERS]))
    config.num_hidden_layers, wrapper.num_layers = TRACED_LAYERS, TRACED_LAYERS
    for name, value in saved.items():
        setattr(config, name, value[:TRACED_LAYERS])
    try:
        yield
    finally:
        setattr(owner, attribute, layers)
        config.num_hidden_layers, wrapper.num_layers = num_layers, num_layers
        for name, value in saved.items():
            setattr(config, name, value)


def _layer_of(node: ir.Node, prefix: str) -> int | None:
    scopes = ast.literal_eval(node.metadata_props.get("pkg.torch.onnx.name_scopes", "[]"))
    for scope in scopes:
        match = re.fullmatch(rf"{re.escape(prefix)}\.(\d+)", scope)
        if match:
            return int(match.group(1))
    return None


def _nodes_by_layer(graph: ir.Graph, prefix: str) -> dict[int, list[ir.Node]] | None:
    """Each traced layer's nodes in graph order: those in its module scope, plus the unscoped
    ones that read only its own cache inputs and feed only that layer (the wrapper's cache
    set-up). Unscoped nodes that feed shared computations (shape symbols, masks) stay shared."""
    nodes = list(graph)
    owner = _subgraph_owners(nodes)
    scoped = {id(node): _layer_of(node, prefix) for node in nodes}
    candidate: dict[int, int] = {}  # id(value) -> layer, read off the cache inputs forwards
    for value in graph.inputs:
        for layer in range(TRACED_LAYERS):
            if value.name and _per_layer_name(value.name, layer, layer, prefix) is not None:
                candidate[id(value)] = layer
    for node in nodes:
        if scoped[id(node)] is None:
            layers = {candidate[id(v)] for v in node.inputs if v is not None and id(v) in candidate}
            if len(layers) == 1:
                candidate.update((id(v), next(iter(layers))) for v in node.outputs)
    assigned = dict(scoped)
    for node in reversed(nodes):  # users come later: confirm each candidate feeds only its layer
        if scoped[id(node)] is not None or not node.outputs or id(node.outputs[0]) not in candidate:
            continue
        layer = candidate[id(node.outputs[0])]
        users = [owner.get(id(user), user) for value in node.outputs for user, _ in value.uses()]
        if users and all(assigned.get(id(user)) == layer for user in users):
            assigned[id(node)] = layer
    by_layer: dict[int, list[ir.Node]] = {i: [] for i in range(TRACED_LAYERS)}
    for node in nodes:
        layer = assigned[id(node)]
        if layer is not None:
            if layer not in by_layer:
                return None
            by_layer[layer].append(node)
    return by_layer


def _subgraphs(node: ir.Node) -> list[ir.Graph]:
    graphs = []
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            graphs.append(attribute.value)
        elif attribute.type == ir.AttributeType.GRAPHS:
            graphs.extend(attribute.value)
    return graphs


def _subgraph_owners(nodes: list[ir.Node]) -> dict[int, ir.Node]:
    """id(node inside a subgraph, at any depth) -> the top-level node that holds it."""
    owners: dict[int, ir.Node] = {}
    for node in nodes:
        pending = _subgraphs(node)
        while pending:
            graph = pending.pop()
            for inner in graph:
                owners[id(inner)] = node
                pending.extend(_subgraphs(inner))
    return owners


def _per_layer_name(name: str, layer: int, new_layer: int, prefix: str) -> str | None:
    """`name` with its layer index replaced, if `name` is layer `layer`'s weight or cache I/O."""
    cache_io = (rf"^({re.escape(io_prefix)}){layer}(\.)" for io_prefix in _KV_IO_PREFIXES)
    for pattern in (rf"^({re.escape(prefix)}\.){layer}(\.)", *cache_io):
        if re.search(pattern, name):
            return re.sub(pattern, rf"\g<1>{new_layer}\g<2>", name, count=1)
    return None


def _attribute_key(attribute: ir.Attr) -> str:
    if attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return attribute.type.name  # compared node by node by `_same_nodes`
    value = attribute.value
    if isinstance(value, ir.TensorProtocol):
        return f"{value.dtype}{value.shape}{value.tobytes()!r}"
    return repr(value)


class _Layer:
    def __init__(self, nodes: list[ir.Node]):
        self.nodes = nodes
        self.position = {id(node): i for i, node in enumerate(nodes)}
        self.members = set(self.position) | set(_subgraph_owners(nodes))  # subgraph nodes included


def _input_role(value: ir.Value | None, layer: int, own: _Layer, previous: _Layer, prefix: str):
    """Where a layer's input comes from, in terms that do not depend on the layer index."""
    if value is None:
        return ("none",)
    producer = value.producer()
    if producer is not None and id(producer) in own.position:
        return ("own", own.position[id(producer)], value.index())
    if producer is not None and id(producer) in previous.position:
        if any(id(user) not in own.members and id(user) not in previous.members for user, _ in value.uses()):
            # Computed by the previous layer for the ones after it too (the first MoE layer's row
            # count, where dense layers come first): shared, not the layer-to-layer stream.
            return ("shared", id(value))
        # Counted from the end: the layer before may hold such shared computations besides.
        return ("previous", len(previous.nodes) - previous.position[id(producer)], value.index())
    if value.name and _per_layer_name(value.name, layer, 0, prefix) is not None:
        return ("per_layer", _per_layer_name(value.name, layer, 0, prefix))
    return ("shared", id(value))


def _same_nodes(first: list[ir.Node], second: list[ir.Node], role_a, role_b, outputs=((), ())) -> bool:
    """Two node lists compute the same thing: op by op, attributes (subgraphs recursively), and
    inputs (and `outputs`) of the same role; `role_a`/`role_b` say where a value not computed in
    the list comes from."""
    if len(first) != len(second):
        return False
    position_a = {id(node): i for i, node in enumerate(first)}
    position_b = {id(node): i for i, node in enumerate(second)}

    def local(role, position):
        def where(value):
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) in position:
                return ("local", position[id(producer)], value.index())
            return role(value)

        return where

    where_a, where_b = local(role_a, position_a), local(role_b, position_b)
    for a, b in zip(first, second):
        if (a.op_type, a.domain, a.overload, len(a.inputs), len(a.outputs)) != (b.op_type, b.domain, b.overload, len(b.inputs), len(b.outputs)):
            return False
        if {k: _attribute_key(v) for k, v in a.attributes.items()} != {k: _attribute_key(v) for k, v in b.attributes.items()}:
            return False
        if any(where_a(x) != where_b(y) for x, y in zip(a.inputs, b.inputs)):
            return False
        graphs_a, graphs_b = _subgraphs(a), _subgraphs(b)
        if len(graphs_a) != len(graphs_b):
            return False
        for graph_a, graph_b in zip(graphs_a, graphs_b):
            if len(graph_a.inputs) != len(graph_b.inputs):
                return False
            if not _same_nodes(
                list(graph_a), list(graph_b), _with_inputs(graph_a, where_a), _with_inputs(graph_b, where_b), (graph_a.outputs, graph_b.outputs)
            ):
                return False
    return [where_a(v) for v in outputs[0]] == [where_b(v) for v in outputs[1]]


def _with_inputs(graph: ir.Graph, role):
    """`role`, and a subgraph's own inputs (FlexAttention's scores) by position."""
    inputs = {id(v): i for i, v in enumerate(graph.inputs)}
    return lambda value: ("graph_input", inputs[id(value)]) if value is not None and id(value) in inputs else role(value)


def _isomorphic(layers: list[_Layer], index: int, prefix: str) -> bool:
    """Layer `index` and `index - 1` are the same graph, each read against its own predecessor."""
    (before, first), (_, second) = (layers[index - 2], layers[index - 1]), (layers[index - 1], layers[index])
    return _same_nodes(
        first.nodes,
        second.nodes,
        lambda value: _input_role(value, index - 1, first, before, prefix),
        lambda value: _input_role(value, index, second, first, prefix),
    )


def _clone_attributes(node: ir.Node, resolve, label: str) -> list[ir.Attr]:
    """The node's attributes; subgraphs are cloned with their outer values mapped by `resolve`."""
    attributes = []
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            attributes.append(ir.Attr(attribute.name, attribute.type, _clone_graph(attribute.value, resolve, label)))
        elif attribute.type == ir.AttributeType.GRAPHS:
            graphs = [_clone_graph(graph, resolve, label) for graph in attribute.value]
            attributes.append(ir.Attr(attribute.name, attribute.type, graphs))
        else:
            attributes.append(attribute)
    return attributes


def _clone_graph(graph: ir.Graph, resolve, label: str) -> ir.Graph:
    """A copy of `graph` (an If branch, FlexAttention's score_mod, ...): its own inputs, nodes renamed under `label`."""
    inputs = [ir.Value(name=v.name, type=v.type, shape=v.shape) for v in graph.inputs]
    mapping: dict[int, ir.Value] = {id(old): new for old, new in zip(graph.inputs, inputs)}

    def inner(value: ir.Value | None) -> ir.Value | None:
        if value is None:
            return None
        return mapping[id(value)] if id(value) in mapping else resolve(value)

    nodes = []
    for node in graph:
        clone = ir.Node(
            node.domain, node.op_type, [inner(v) for v in node.inputs], attributes=_clone_attributes(node, inner, label),
            overload=node.overload, num_outputs=len(node.outputs), name=f"{label}/{node.name}",
        )
        for original, output in zip(node.outputs, clone.outputs):
            output.name, output.type, output.shape = f"{label}/{original.name}", original.type, original.shape
            mapping[id(original)] = output
        nodes.append(clone)
    return ir.Graph(inputs, [inner(v) for v in graph.outputs], nodes=nodes, name=graph.name)


def replicate(model: ir.Model, wrapper: torch.nn.Module, num_layers: int, stream: StreamedWeights | None = None) -> ir.Model | None:
    """Grow `model` (traced with TRACED_LAYERS layers) to `num_layers` by cloning its last layer;
    None if the traced layers do not have the expected shape (the caller then traces all and
    drops `model`, which may be half grown).

    With `stream` (`--streamed`: the clones' PyTorch weights are on the meta device), each clone's
    weights are lazy tensors read from the checkpoint when the graph is saved; a weight the traced
    layer reads only through a `Transpose` becomes that Transpose's output, transposed when read
    (what the optimizer's constant folding makes of the in-memory form, without materializing it)."""
    try:
        return _replicate(model, wrapper, num_layers, stream)
    except _NotReplicable as reason:
        logger.info("Tracing all %d layers: %s.", num_layers, reason)
        return None


def _transposed_weight(node: ir.Node) -> ir.Value | None:
    """The weight `node` transposes, if it is a Transpose of an initializer that nothing else reads."""
    if node.op_type != "Transpose" or node.domain != "" or len(node.inputs) != 1:
        return None
    weight = node.inputs[0]
    if weight is None or weight.const_value is None or not weight.is_initializer() or len(weight.uses()) != 1:
        return None
    return weight


def _replicate(model: ir.Model, wrapper: torch.nn.Module, num_layers: int, stream: StreamedWeights | None) -> ir.Model:
    graph = model.graph
    prefix = _decoder_layers(wrapper, num_layers)[2]
    by_layer = _nodes_by_layer(graph, prefix)
    if by_layer is None:
        raise _NotReplicable("torch's node scopes name layers beyond the traced ones")
    layers = [_Layer(by_layer[i]) for i in range(TRACED_LAYERS)]
    source = TRACED_LAYERS - 1
    first, last = layers[source - 1], layers[source]
    if not last.nodes or not _isomorphic(layers, source, prefix):
        raise _NotReplicable(f"traced layers {source - 1} and {source} differ")

    weights = dict(wrapper.named_parameters(remove_duplicate=False)) | dict(wrapper.named_buffers(remove_duplicate=False))
    graph_inputs = {value.name: value for value in graph.inputs}
    graph_outputs = {id(value): value.name for value in graph.outputs}
    new_io: dict[str, ir.Value] = {}  # by name, ordered below as a full trace orders them
    in_layers = {id(node) for nodes in by_layer.values() for node in nodes}
    in_layers |= {inner for inner, node in _subgraph_owners(list(graph)).items() if id(node) in in_layers}
    # Uses of the last traced layer's values outside the layers (the final norm): moved to the last clone.
    outside_uses = [
        (user, index, value)
        for node in last.nodes
        for value in node.outputs
        for user, index in value.uses()
        if id(user) not in in_layers
    ]
    previous = last
    anchor = last.nodes[-1]
    announced: set[int] = set()
    for k in range(TRACED_LAYERS, num_layers):
        mapping: dict[int, ir.Value] = {}
        clones: list[ir.Node] = []
        aligned: list = []  # one entry per node of `last` (folded Transposes included): the next clone's stream

        def on_read(k: int = k) -> None:
            if k not in announced:
                announced.add(k)
                logger.info("  writing layer %d/%d from the checkpoint", k + 1, num_layers)

        def lazy(name: str, like: ir.Value, perm: tuple[int, ...] | None, tensor_name: str) -> ir.Value:
            const = stream.lazy(name, like.const_value, perm, tensor_name, on_read)
            shape = ir.Shape(const.shape) if perm is not None else like.shape
            new = ir.Value(name=tensor_name, type=like.type, shape=shape, const_value=const)
            graph.register_initializer(new)
            return new

        def resolve(value: ir.Value | None) -> ir.Value | None:
            if value is None:
                return None
            if id(value) in mapping:
                return mapping[id(value)]
            producer = value.producer()
            if producer is not None and id(producer) in first.position:  # the stream from layer k-1
                return previous.nodes[first.position[id(producer)]].outputs[value.index()]
            name = value.name and _per_layer_name(value.name, source, k, prefix)
            if not name:
                return value  # shared by all layers
            if value.name in graph_inputs:
                new = new_io[name] = ir.Value(name=name, type=value.type, shape=value.shape)
            else:
                tensor = weights.get(name)
                if tensor is None or value.const_value is None:
                    raise _NotReplicable(f"layer {k} has no weight `{name}`")
                if stream is not None and tensor.is_meta:
                    mapping[id(value)] = lazy(name, value, None, name)
                    return mapping[id(value)]
                # The layer's own PyTorch tensor, wrapped the way torch's exporter wraps weights.
                wrap = type(value.const_value) if type(value.const_value).__name__ == "TorchTensor" else None
                const = wrap(tensor.detach(), name=name) if wrap else ir.tensor(tensor.detach().cpu().numpy(), name=name)
                new = ir.Value(name=name, type=value.type, shape=value.shape, const_value=const)
                graph.register_initializer(new)
            mapping[id(value)] = new
            return new

        for node in last.nodes:
            weight = _transposed_weight(node) if stream is not None else None
            name = weight is not None and _per_layer_name(weight.name, source, k, prefix)
            if name and name in weights and weights[name].is_meta:
                rank = len(weight.shape)
                perm = tuple(node.attributes["perm"].as_ints()) if "perm" in node.attributes else tuple(reversed(range(rank)))
                output = node.outputs[0]
                mapping[id(output)] = lazy(name, weight, perm, f"layers.{k}/{output.name}")
                aligned.append(SimpleNamespace(outputs=[mapping[id(output)]]))
                continue
            clone = ir.Node(
                node.domain, node.op_type, [resolve(v) for v in node.inputs],
                attributes=_clone_attributes(node, resolve, f"layers.{k}"), overload=node.overload,
                num_outputs=len(node.outputs), name=f"layers.{k}/{node.name}",
            )
            for original, output in zip(node.outputs, clone.outputs):
                output.name = _per_layer_name(original.name, source, k, prefix) if id(original) in graph_outputs else f"layers.{k}/{original.name}"
                output.type, output.shape = original.type, original.shape
                mapping[id(original)] = output
                if id(original) in graph_outputs:
                    new_io[output.name] = output
            clone.metadata_props["pkg.torch.onnx.name_scopes"] = repr([f"{prefix}.{k}"])
            clones.append(clone)
            aligned.append(clone)
        graph.insert_after(anchor, clones)
        anchor = clones[-1]
        previous = SimpleNamespace(nodes=aligned)
    for user, index, value in outside_uses:
        user.replace_input_with(index, previous.nodes[last.position[id(value.producer())]].outputs[value.index()])
    for io in (graph.inputs, graph.outputs):
        per_layer = [v.name for v in io if v.name and _per_layer_name(v.name, source, source, prefix) is not None]
        io.extend(new_io[_per_layer_name(name, source, k, prefix)] for k in range(TRACED_LAYERS, num_layers) for name in per_layer)
    graph.sort()
    logger.info("Traced %d layers and repeated layer %d for the other %d.", TRACED_LAYERS, source, num_layers - TRACED_LAYERS)
    return model
