"""`ort-cpu-moe`: every Mixture-of-Experts layer as onnxruntime's `com.microsoft::MoE`.

The main graph computes a MoE layer with standard ops behind an `If` (exporters/moe.py): the
selected experts' weights gathered by index for few rows, every expert for many. onnxruntime's CPU
`MoE` kernel instead runs each row through its k experts reading their weights in place (no
gather copy, no dense work), which measured several times faster in decode
(`benchmarks/moe_bench.py`).

Routing stays the model's own: the `If`'s top-k indices and weights (whatever the family computed:
softmax, sigmoid, grouped top-k, score correction, routed scaling) reach `MoE` as router logits
`log(w / sum(w))` at the selected experts and `-inf` elsewhere, so its softmax gives back
`w / sum(w)` on exactly those k; the output is multiplied by `sum(w)` again
(`normalize_routing_weights=0`). Experts: SwiGLU (`activation_type="swiglu"`), silu-gated
(`alpha=1, beta=0`) or gpt-oss's clamped form (`alpha`, `beta=1`, `swiglu_limit` read from the
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
    node: ir.Node  # the If
    hidden: ir.Value  # [T, H]
    index: ir.Value  # [T, k] int64
    weights: ir.Value  # [T, k]
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
    """[E, N] of an `Add(matmul, bias[:, None, :])` right after `node`, with that Add."""
    users = [user for user, _ in node.outputs[0].uses()]
    if len(users) == 1 and users[0].op_type == "Add":
        bias = _constant(users[0].inputs[1])
        if bias is not None and bias.ndim == 3 and bias.shape[1] == 1:
            return bias[:, 0, :], users[0]
    return None, None


def _activation(nodes: list[ir.Node]) -> tuple[float, float, float | None, bool] | None:
    """(alpha, beta, limit, interleaved) of the SwiGLU between the two expert matmuls, or None."""
    ops = sorted(node.op_type for node in nodes)
    if ops == ["Mul", "Mul", "Sigmoid", "Split"]:  # silu(gate) * up, halves concatenated
        split = next(node for node in nodes if node.op_type == "Split")
        if len(split.outputs) == 2 and split.attributes.get_int("axis", 0) in (-1, 2):
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


def _moe_layer(node: ir.Node) -> MoeLayer | None:
    """The experts computation of exporters/moe.py, read off the `If`'s all-experts branch."""
    if node.op_type != "If" or "else_branch" not in node.attributes:
        return None
    branch = node.attributes["else_branch"].value
    nodes = list(branch)
    matmuls = [n for n in nodes if n.op_type == "MatMul" and n.inputs[1] is not None and _outer_constant(n.inputs[1], branch) is not None]
    scatters = [n for n in nodes if n.op_type == "ScatterElements"]
    if len(matmuls) != 2 or len(scatters) != 1 or len(branch.outputs) != 1:
        return None
    up, down = matmuls
    first, second = _outer_constant(up.inputs[1], branch), _outer_constant(down.inputs[1], branch)
    hidden = up.inputs[0]
    if hidden.graph is branch or first.ndim != 3 or second.ndim != 3:
        return None
    first_bias, first_add = _bias_after(up, branch)
    down_bias, _ = _bias_after(down, branch)
    start = nodes.index(first_add or up) + 1
    activation = _activation(nodes[start : nodes.index(down)])
    scatter = scatters[0]
    index, weights = scatter.inputs[1], scatter.inputs[2]
    if activation is None or index.graph is branch or weights.graph is branch:
        return None
    if index.shape is None or index.shape.rank() != 2 or not isinstance(index.shape[1], int):
        return None
    alpha, beta, limit, interleaved = activation
    return MoeLayer(node, hidden, index, weights, first, first_bias, second, down_bias, alpha, beta, limit, interleaved)


def find_moe_layers(graph: ir.Graph) -> list[MoeLayer]:
    return [layer for node in graph if (layer := _moe_layer(node)) is not None]


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
        raise VariantNotApplicableError("ort-cpu-moe: no Mixture-of-Experts layer (If over gathered/all experts) in this graph.")
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
        experts, k = layer.first.shape[0], layer.index.shape[1]
        stem = f"{prefix}layer{i}"
        fc1 = own(f"{stem}.fc1", _fc1(layer.first, layer.interleaved))
        fc1_bias = own(f"{stem}.fc1_bias", _fc1_bias(layer.first_bias, layer.interleaved)) if layer.first_bias is not None else None
        fc2 = own(f"{stem}.fc2", np.ascontiguousarray(layer.down.transpose(0, 2, 1)))
        fc2_bias = own(f"{stem}.fc2_bias", np.ascontiguousarray(layer.down_bias)) if layer.down_bias is not None else None
        hidden, index, weights = value(layer.hidden.name), value(layer.index.name), value(layer.weights.name)
        # The model's own routing as router logits: log(w / sum w) at the selected experts, -inf elsewhere.
        total = add("ReduceSum", [weights, add("Constant", [], value_ints=[1])], keepdims=1)
        rows = add("Shape", [index], start=0, end=1)
        zeros = add("ConstantOfShape", [add("Concat", [rows, add("Constant", [], value_ints=[experts])], axis=0)],
                    value=ir.tensor(np.zeros(1, np.float32)))
        logits = add("Log", [add("ScatterElements", [zeros, index, add("Div", [weights, total])], axis=1)])
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
