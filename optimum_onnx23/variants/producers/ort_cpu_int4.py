"""`ort-cpu-int4`: every linear layer (the tied lm_head included) as onnxruntime's `MatMulNBits`
with block-wise int4 weights packed by onnxruntime's own `MatMulNBitsQuantizer`.

Only the packed weights and their scales are new; activations, norms, attention and the embedding
stay the main graph's. `accuracy_level=4` lets onnxruntime's CPU kernel quantize activations to
int8 per block and use integer dot products, which is where the decode speed comes from.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from ..format import owned_prefix
from ._linear import find_linears
from ._merge import merge_bodies
from .ort_cpu import ort_cpu_region
from .spec import VariantSpec

__all__ = ["NAME", "produce"]

NAME = "ort-cpu-int4"
logger = logging.getLogger(__name__)


def _quantize(model: ir.Model, block_size: int, accuracy_level: int, symmetric: bool, include_lm_head: bool):
    """Run onnxruntime's quantizer on a model holding only the linear layers; returns (linears, quantized ir graph)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    linears = find_linears(model.graph, include_lm_head)
    inputs, nodes, weights = {}, [], []
    for i, linear in enumerate(linears):
        a = inputs.setdefault(linear.activation.name, ir.Value(name=linear.activation.name, type=ir.TensorType(ir.DataType.FLOAT)))
        w = ir.Value(name=f"w{i}", const_value=ir.tensor(linear.weight_kn(), name=f"w{i}"))
        weights.append(w)
        node = ir.node("MatMul", [a, w], name=f"linear{i}")
        node.outputs[0].name = linear.output.name
        node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        nodes.append(node)
    graph = ir.Graph(list(inputs.values()), [n.outputs[0] for n in nodes], nodes=nodes, initializers=weights, opset_imports={"": 21})
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level)
    quantizer.process()
    result = ir.serde.deserialize_model(quantizer.model.model)
    return linears, result.graph


def produce(
    model: ir.Model,
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = True,
    include_lm_head: bool = True,
    fusions: bool = True,
) -> VariantSpec:
    linears, quantized = _quantize(model, block_size, accuracy_level, symmetric, include_lm_head)
    prefix = owned_prefix(NAME)
    by_output = {node.outputs[0].name: node for node in quantized if node.op_type == "MatMulNBits"}
    body_inputs: dict[str, ir.Value] = {}
    owned: dict[str, ir.TensorProtocol] = {}
    nodes = []
    for linear in linears:
        qnode = by_output.get(linear.output.name)
        if qnode is None:
            logger.warning("ort-cpu-int4: onnxruntime's quantizer left %s in fp32; it stays the main graph's.", linear.node.name)
            continue
        args = [body_inputs.setdefault(linear.activation.name, ir.Value(name=linear.activation.name))]
        for suffix, value in zip(("qweight", "scales", "zero_points"), qnode.inputs[1:]):
            name = f"{prefix}{linear.weight.name}.{suffix}"
            owned[name] = ir.tensor(value.const_value.numpy(), name=name)
            args.append(body_inputs.setdefault(name, ir.Value(name=name)))
        if linear.bias is not None:  # MatMulNBits inputs: A, B, scales, zero_points, g_idx, bias
            args += [None] * (5 - len(args)) + [body_inputs.setdefault(linear.bias.name, ir.Value(name=linear.bias.name))]
        node = ir.Node("com.microsoft", "MatMulNBits", args, attributes=list(qnode.attributes.values()), name=f"{linear.node.name or linear.output.name}_q4")
        node.outputs[0].name = linear.output.name
        nodes.append(node)
    body = ir.Graph(list(body_inputs.values()), [n.outputs[0] for n in nodes], nodes=nodes)
    if fusions:  # the ort-cpu rewrites too: this is the whole onnxruntime-CPU form, not just its weights
        body = merge_bodies(body, ort_cpu_region(model, NAME)[0])
    return VariantSpec(
        name=NAME,
        body=body,
        providers=["CPUExecutionProvider"],
        opset_imports={"": model.opset_imports.get("", 23), "com.microsoft": 1},
        owned=owned,
        priority=30,
        description=f"{len(nodes)} linear layers as com.microsoft::MatMulNBits, int4 blocks of {block_size}, "
        f"{'symmetric' if symmetric else 'asymmetric'}, accuracy_level {accuracy_level}",
        tolerance="int4 weight-only: logits differ from the main graph by the quantization error; greedy tokens mostly agree (see docs/variants.md)",
    )
