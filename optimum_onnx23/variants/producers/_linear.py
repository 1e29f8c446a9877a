"""Find the linear layers of a main graph: `MatMul(x, W)` with a constant 2-D weight, the tied
lm_head `MatMul(x, Transpose(E))` whose weight is the embedding matrix used transposed, and plain
`Gemm(x, W[, bias])` (GPT-2's Conv1D; no transA, alpha = beta = 1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

__all__ = ["Linear", "find_linears", "group_linears", "split_packed", "name_group_outputs"]


@dataclass
class Linear:
    node: ir.Node  # the MatMul
    activation: ir.Value
    weight: ir.Value  # the initializer holding the weight
    transposed: bool  # True when the initializer is [N, K] (torch layout): a Transpose before MatMul, or Gemm transB
    bias: ir.Value | None = None  # Gemm's C, a 1-D [N] initializer

    @property
    def output(self) -> ir.Value:
        return self.node.outputs[0]

    def weight_kn_shape(self) -> tuple[int, int]:
        k, n = (int(d) for d in self.weight.const_value.shape)
        return (n, k) if self.transposed else (k, n)

    def weight_kn(self) -> np.ndarray:
        """The weight as a contiguous [K, N] float32 array (loads it from external data)."""
        array = self.weight.const_value.numpy()
        return np.ascontiguousarray(array.T if self.transposed else array)


def _initializer(value: ir.Value | None) -> ir.Value | None:
    if value is not None and value.is_initializer() and value.const_value is not None and len(value.shape or ()) == 2:
        return value
    return None


def _gemm(node: ir.Node) -> Linear | None:
    attrs = node.attributes
    if attrs.get_int("transA", 0) != 0 or attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
        return None
    activation, b, *rest = node.inputs
    weight = _initializer(b)
    bias = rest[0] if rest else None
    if bias is not None and not (bias.is_initializer() and bias.shape is not None and len(bias.shape) == 1):
        return None
    if weight is None or weight.const_value.dtype != ir.DataType.FLOAT:
        return None
    return Linear(node, activation, weight, attrs.get_int("transB", 0) == 1, bias)


def find_linears(graph: ir.Graph, include_lm_head: bool = True) -> list[Linear]:
    """Linear layers in graph order. Only float32 weights (the quantizers' input)."""
    found = []
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Gemm":
            linear = _gemm(node)
            if linear is not None:
                found.append(linear)
            continue
        if node.op_type != "MatMul":
            continue
        activation, b = node.inputs
        weight = _initializer(b)
        transposed = False
        if weight is None and include_lm_head and b is not None and b.producer() is not None:
            producer = b.producer()
            perm = producer.attributes.get("perm")
            if producer.op_type == "Transpose" and (perm is None or list(perm.as_ints()) == [1, 0]):
                weight = _initializer(producer.inputs[0])
                transposed = weight is not None
        if weight is None or weight.const_value.dtype != ir.DataType.FLOAT:
            continue
        found.append(Linear(node, activation, weight, transposed))
    return found


def group_linears(linears: list[Linear], pack: bool = True) -> list[list[Linear]]:
    """Linears that read the same activation and have no bias (Q/K/V, gate/up) in one group, in
    graph order; every other linear alone. One packed matmul per group reads the activation once
    and gives the CPU kernel a wide N to split across threads (onnxruntime-genai packs QKV too)."""
    if not pack:
        return [[linear] for linear in linears]
    groups: dict[ir.Value, list[Linear]] = {}
    order: list[list[Linear]] = []
    for linear in linears:
        if linear.bias is not None:
            order.append([linear])
            continue
        group = groups.get(linear.activation)
        if group is None:
            group = groups[linear.activation] = []
            order.append(group)
        group.append(linear)
    return order


def split_packed(packed: ir.Value, group: list[Linear], tag: str) -> list[ir.Node]:
    """`Split(packed, [N1, N2, ...], axis=-1)` whose outputs carry the group's original output names."""
    sizes = ir.node("Constant", [], attributes={"value": ir.tensor(np.array([g.weight_kn_shape()[1] for g in group], np.int64))})
    sizes.outputs[0].name = f"{tag}.sizes"
    split = ir.node("Split", [packed, sizes.outputs[0]], attributes={"axis": -1}, num_outputs=len(group), name=f"{tag}.split")
    for value, linear in zip(split.outputs, group):
        value.name = linear.output.name
    return [sizes, split]


def name_group_outputs(output: ir.Value, group: list[Linear], tag: str) -> tuple[list[ir.Node], list[ir.Value]]:
    """Give the quantized matmul `output` of `group` the original output names: a lone linear's
    own name, or a `split_packed` (nodes returned) back into each packed linear's output."""
    if len(group) == 1:
        output.name = group[0].output.name
        return [], [output]
    output.name = tag
    split = split_packed(output, group, tag)
    return split, list(split[-1].outputs)
