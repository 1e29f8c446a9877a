"""`ort-cpu-moe`: every Mixture-of-Experts layer as onnxruntime's `com.microsoft::MoE`.

The main graph computes a MoE layer with standard ops (exporters/moe.py): one `If` per expert
(taken when a row selected it) summed, or, for many experts, one `If` over the selected experts'
weights gathered by index (few rows) or every expert (many rows). onnxruntime's CPU `MoE` kernel
instead runs each row through its k experts only, reading their weights in place, which measured
faster in prefill (`benchmarks/moe_bench.py`, docs/moe.md).

Routing stays the model's own: the top-k weights (whatever the family computed: softmax, sigmoid,
grouped top-k, score correction, routed scaling), as the dense [rows, experts] matrix the main
graph builds (zero off each row's top-k), reach `MoE` as router logits `log(w / sum(w))`: `-inf`
off the top-k, so its softmax gives back `w / sum(w)` on exactly those k; the output is multiplied
by `sum(w)` again (`normalize_routing_weights=0`). Experts: SwiGLU (`activation_type="swiglu"`),
silu-gated (`alpha=1, beta=0`) or gpt-oss's clamped form (`alpha`, `beta=1`, `swiglu_limit` read from the
graph). The CPU kernel takes fc1 as [E, 2I, H] with gate and up rows interleaved
(`swiglu_fusion=1`) and fc2 as [E, H, I]: the main graph's weights are [E, H, 2I] and [E, I, H]
(`x @ W`, gate and up halves concatenated except for gpt-oss), so this variant owns re-laid-out
fp32 copies of the expert weights (the file grows by the experts' size). fp32 exports only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..format import owned_prefix
from ._merge import merge_bodies
from .ort_cpu import ort_cpu_region
from .spec import VariantSpec

__all__ = ["NAME", "MoeLayer", "find_moe_layers", "produce"]

NAME = "ort-cpu-moe"


@dataclass
class MoeLayer:
    node: ir.Node  # the node computing the layer's experts output: the If, or the last Add of the per-expert Ifs
    hidden: ir.Value  # [T, H]
    routing: ir.Value | tuple[ir.Value, ir.Value]  # dense [T, E] weights, or (top-k index [T, k] int64, weights [T, k])
    k: int
    first: np.ndarray  # [E, H, N1], x @ W
    first_bias: np.ndarray | None  # [E, N1]
    down: np.ndarray  # [E, I, H]
    down_bias: np.ndarray | None  # [E, H]
    alpha: float
    beta: float
    limit: float | None
    interleaved: bool  # gate/up rows interleaved (gpt-oss) rather than concatenated halves


def _constant(value: ir.Value | None):
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _scalar(value: ir.Value | None) -> float | None:
    array = _constant(value)
    return None if array is None or array.size != 1 else float(array.reshape(-1)[0])


def _outer_constant(value: ir.Value, branch: ir.Graph) -> np.ndarray | None:
    """An initializer of the main graph that the branch reads."""
    return _constant(value) if value.graph is not branch and value.const_value is not None else None


def _bias_after(node: ir.Node, branch: ir.Graph) -> tuple[np.ndarray | None, ir.Node | None]:
    """The bias of an `Add` right after `node` (all experts: `bias[:, None, :]` -> [E, N]; one
    expert: [N]), with that Add."""
    users = [user for user, _ in node.outputs[0].uses()]
    if len(users) == 1 and users[0].op_type == "Add":
        bias = _constant(users[0].inputs[1])
        if bias is not None and bias.ndim == 3 and bias.shape[1] == 1:
            return bias[:, 0, :], users[0]
        if bias is not None and bias.ndim == 1:
            return bias, users[0]
    return None, None


def _activation(nodes: list[ir.Node], rank: int = 3) -> tuple[float, float, float | None, bool] | None:
    """(alpha, beta, limit, interleaved) of the SwiGLU between the two expert matmuls (on tensors of
    `rank`), or None."""
    ops = sorted(node.op_type for node in nodes)
    if ops == ["Mul", "Mul", "Sigmoid", "Split"]:  # silu(gate) * up, halves concatenated
        split = next(node for node in nodes if node.op_type == "Split")
        if len(split.outputs) == 2 and split.attributes.get_int("axis", 0) in (-1, rank - 1):
            return 1.0, 0.0, None, False
        return None
    if ops == sorted(["Slice", "Slice", "Clip", "Clip", "Mul", "Sigmoid", "Mul", "Add", "Mul"]):  # gpt-oss
        clips = [node for node in nodes if node.op_type == "Clip"]
        gate_clip = next((c for c in clips if len(c.inputs) > 1 and c.inputs[1] is None), None)
        limit = _scalar(gate_clip.inputs[2]) if gate_clip is not None and len(gate_clip.inputs) > 2 else None
        sigmoid = next(node for node in nodes if node.op_type == "Sigmoid")
        scale = sigmoid.inputs[0].producer()
        alpha = _scalar(scale.inputs[1]) if scale is not None and scale.op_type == "Mul" else None
        add = next(node for node in nodes if node.op_type == "Add")
        beta = _scalar(add.inputs[1])
        if None in (limit, alpha, beta):
            return None
        return alpha, beta, limit, True
    return None


@dataclass
class _Experts:
    """The experts computation of one branch: two matmuls on main-graph weights, biases, SwiGLU."""

    hidden: ir.Value
    first: np.ndarray
    first_bias: np.ndarray | None
    down: np.ndarray
    down_bias: np.ndarray | None
    activation: tuple  # (alpha, beta, limit, interleaved)


def _experts_in(branch: ir.Graph, rank: int) -> _Experts | None:
    """Read off `branch`: x @ first (+ bias) -> SwiGLU -> @ down (+ bias), the weights main-graph
    initializers of `rank` dims (3: all experts stacked, 2: one expert)."""
    nodes = list(branch)
    matmuls = [n for n in nodes if n.op_type == "MatMul" and n.inputs[1] is not None and _outer_constant(n.inputs[1], branch) is not None]
    if len(matmuls) != 2 or len(branch.outputs) != 1:
        return None
    up, down = matmuls
    first, second = _outer_constant(up.inputs[1], branch), _outer_constant(down.inputs[1], branch)
    if up.inputs[0].graph is branch or first.ndim != rank or second.ndim != rank:
        return None
    first_bias, first_add = _bias_after(up, branch)
    down_bias, _ = _bias_after(down, branch)
    activation = _activation(nodes[nodes.index(first_add or up) + 1 : nodes.index(down)], rank)
    if activation is None:
        return None
    return _Experts(up.inputs[0], first, first_bias, second, down_bias, activation)


def _moe_layer(node: ir.Node) -> MoeLayer | None:
    """The If over gathered/all experts of exporters/moe.py, read off its all-experts branch."""
    if node.op_type != "If" or "else_branch" not in node.attributes:
        return None
    branch = node.attributes["else_branch"].value
    experts = _experts_in(branch, rank=3)
    scatters = [n for n in branch if n.op_type == "ScatterElements"]
    if experts is None or len(scatters) != 1:
        return None
    index, weights = scatters[0].inputs[1], scatters[0].inputs[2]
    if index.graph is branch or weights.graph is branch:
        return None
    if index.shape is None or index.shape.rank() != 2 or not isinstance(index.shape[1], int):
        return None
    return MoeLayer(node, experts.hidden, (index, weights), index.shape[1], experts.first, experts.first_bias, experts.down,
                    experts.down_bias, *experts.activation)


@dataclass
class _Expert:
    node: ir.Node  # its If
    routing: ir.Value  # the dense [T, E] routing weights it takes its column from
    column: int
    experts: _Experts  # this one expert's computation


def _column_of(value: ir.Value) -> tuple[ir.Value, int] | None:
    """(matrix, e) for `value` = Slice(matrix, [e], [e + 1], axes=[1])."""
    node = value.producer()
    if node is None or node.op_type != "Slice" or len(node.inputs) < 4:
        return None
    starts, ends, axes = (_constant(v) for v in node.inputs[1:4])
    if starts is None or ends is None or axes is None or starts.size != 1 or axes.size != 1 or int(axes[0]) not in (1, -1):
        return None
    if int(ends[0]) != int(starts[0]) + 1:
        return None
    return node.inputs[0], int(starts[0])


def _expert(node: ir.Node) -> _Expert | None:
    """One expert's `If` of exporters/moe.py's per-expert form: then = expert(x) * routing column, else zeros."""
    if node.op_type != "If" or "then_branch" not in node.attributes:
        return None
    branch = node.attributes["then_branch"].value
    if any(n.op_type == "MatMul" for n in node.attributes["else_branch"].value):
        return None
    experts = _experts_in(branch, rank=2)
    scale = branch.outputs[0].producer() if experts is not None else None
    if scale is None or scale.op_type != "Mul":
        return None
    weight = next((v for v in scale.inputs if v is not None and v.graph is not branch), None)
    column = _column_of(weight) if weight is not None else None
    if column is None:
        return None
    return _Expert(node, column[0], column[1], experts)


def _summed(experts: list[_Expert]) -> ir.Node | None:
    """The last Add of the chain `y_0 + y_1 + ... + y_{E-1}` over the experts' If outputs."""
    outputs = {e.node.outputs[0] for e in experts}
    total, node = experts[0].node.outputs[0], None
    for _ in experts[1:]:
        users = [user for user, _ in total.uses()]
        if len(users) != 1 or users[0].op_type != "Add" or not any(v in outputs for v in users[0].inputs if v is not total):
            return None
        node, total = users[0], users[0].outputs[0]
    return node


def _per_expert_layers(graph: ir.Graph) -> list[MoeLayer]:
    groups: dict[tuple[ir.Value, ir.Value], list[_Expert]] = {}
    for node in graph:
        expert = _expert(node)
        if expert is not None:
            groups.setdefault((expert.experts.hidden, expert.routing), []).append(expert)
    layers = []
    for (hidden, routing), experts in groups.items():
        experts.sort(key=lambda e: e.column)
        total = _summed(experts)
        # routing = ReduceSum over k of weights * (index == e): its input [T, k, E] gives k.
        mask = routing.producer().inputs[0] if routing.producer() is not None and routing.producer().op_type == "ReduceSum" else None
        k = mask.shape[1] if mask is not None and mask.shape is not None and mask.shape.rank() == 3 else None
        if total is None or not isinstance(k, int) or [e.column for e in experts] != list(range(len(experts))):
            continue
        each = [e.experts for e in experts]
        if len({e.activation for e in each}) != 1 or len({e.first_bias is None for e in each}) != 1:
            continue
        stack = lambda arrays: None if arrays[0] is None else np.stack(arrays)  # noqa: E731
        layers.append(MoeLayer(
            total, hidden, routing, k, stack([e.first for e in each]), stack([e.first_bias for e in each]),
            stack([e.down for e in each]), stack([e.down_bias for e in each]), *each[0].activation,
        ))
    return layers


def find_moe_layers(graph: ir.Graph) -> list[MoeLayer]:
    """Every MoE layer of an export, in either of exporters/moe.py's forms."""
    return [layer for node in graph if (layer := _moe_layer(node)) is not None] + _per_expert_layers(graph)


def _fc1(weight_hn: np.ndarray, interleaved: bool) -> np.ndarray:
    """[E, H, 2I] (x @ W) -> [E, 2I, H] with gate and up rows interleaved, as the CPU kernel reads."""
    rows = weight_hn.transpose(0, 2, 1)
    if not interleaved:
        experts, width, hidden = rows.shape
        rows = rows.reshape(experts, 2, width // 2, hidden).transpose(0, 2, 1, 3).reshape(experts, width, hidden)
    return np.ascontiguousarray(rows)


def _fc1_bias(bias: np.ndarray, interleaved: bool) -> np.ndarray:
    if interleaved:
        return np.ascontiguousarray(bias)
    experts, width = bias.shape
    return np.ascontiguousarray(bias.reshape(experts, 2, width // 2).transpose(0, 2, 1).reshape(experts, width))


def produce(model: ir.Model, fusions: bool = True) -> VariantSpec:
    from ...errors import VariantNotApplicableError

    layers = find_moe_layers(model.graph)
    if not layers:
        raise VariantNotApplicableError("ort-cpu-moe: no Mixture-of-Experts layer of exporters/moe.py's forms in this graph.")
    if any(layer.first.dtype != np.float32 for layer in layers):
        raise VariantNotApplicableError("ort-cpu-moe: onnxruntime's CPU MoE kernel is fp32 only; export with --dtype fp32.")
    prefix = owned_prefix(NAME)
    inputs: dict[str, ir.Value] = {}
    owned: dict[str, ir.TensorProtocol] = {}
    nodes: list[ir.Node] = []
    outputs: list[ir.Value] = []

    def value(name: str) -> ir.Value:
        return inputs.setdefault(name, ir.Value(name=name))

    def own(name: str, array: np.ndarray) -> ir.Value:
        owned[name] = ir.tensor(array, name=name)
        return value(name)

    def add(op: str, args, domain: str = "", **attributes) -> ir.Value:
        node = ir.node(op, args, attributes=attributes, domain=domain)
        nodes.append(node)
        return node.outputs[0]

    for i, layer in enumerate(layers):
        experts, k = layer.first.shape[0], layer.k
        stem = f"{prefix}layer{i}"
        fc1 = own(f"{stem}.fc1", _fc1(layer.first, layer.interleaved))
        fc1_bias = own(f"{stem}.fc1_bias", _fc1_bias(layer.first_bias, layer.interleaved)) if layer.first_bias is not None else None
        fc2 = own(f"{stem}.fc2", np.ascontiguousarray(layer.down.transpose(0, 2, 1)))
        fc2_bias = own(f"{stem}.fc2_bias", np.ascontiguousarray(layer.down_bias)) if layer.down_bias is not None else None
        hidden = value(layer.hidden.name)
        # The model's own routing as router logits: log(w / sum w) at the selected experts, -inf elsewhere.
        if isinstance(layer.routing, tuple):  # top-k index and weights: scattered into [rows, experts]
            index, weights = (value(v.name) for v in layer.routing)
            rows = add("Shape", [index], start=0, end=1)
            zeros = add("ConstantOfShape", [add("Concat", [rows, add("Constant", [], value_ints=[experts])], axis=0)],
                        value=ir.tensor(np.zeros(1, np.float32)))
            dense = add("ScatterElements", [zeros, index, weights], axis=1)
        else:
            dense = value(layer.routing.name)
        total = add("ReduceSum", [dense, add("Constant", [], value_ints=[1])], keepdims=1)
        logits = add("Log", [add("Div", [dense, total])])
        attributes = dict(k=k, activation_type="swiglu", swiglu_fusion=1, activation_alpha=layer.alpha,
                          activation_beta=layer.beta, normalize_routing_weights=0)
        if layer.limit is not None:
            attributes["swiglu_limit"] = layer.limit
        moe = add("MoE", [hidden, logits, fc1, fc1_bias, fc2, fc2_bias], domain="com.microsoft", **attributes)
        out = add("Mul", [moe, total])
        out.name = layer.node.outputs[0].name  # the value this region replaces
        outputs.append(out)
    body = ir.Graph(list(inputs.values()), outputs, nodes=nodes)
    if fusions:  # the ort-cpu rewrites too: this is the whole onnxruntime-CPU form
        body = merge_bodies(body, ort_cpu_region(model, NAME)[0])
    return VariantSpec.ort_cpu(
        model,
        name=NAME,
        body=body,
        owned=owned,
        priority=15,
        description=f"{len(layers)} Mixture-of-Experts layers as com.microsoft::MoE (fp32 experts re-laid out for its CPU "
        "kernel; the model's own top-k routing)",
        tolerance="fp32: within 1e-4 of the main graph",
    )
