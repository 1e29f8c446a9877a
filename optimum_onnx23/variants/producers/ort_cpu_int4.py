"""`ort-cpu-int4`: every linear layer (the tied lm_head included) as onnxruntime's `MatMulNBits`
with block-wise int4 weights packed by onnxruntime's own `MatMulNBitsQuantizer`.

Only the packed weights and their scales are new; activations, norms, attention and the embedding
stay the main graph's. `accuracy_level=4` lets onnxruntime's CPU kernel quantize activations to
int8 per block and use integer dot products, which is where the decode speed comes from. The
`ort-cpu` rewrites come along (`fusions`); packing same-input linears is available (`pack`).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from ..format import owned_prefix
from ._linear import Linear, find_linears, group_linears, name_group_outputs
from ._merge import merge_bodies
from .ort_cpu import ort_cpu_region
from .spec import VariantSpec

__all__ = ["NAME", "produce"]

NAME = "ort-cpu-int4"
logger = logging.getLogger(__name__)


def _quantize(groups: list[list[Linear]], block_size: int, accuracy_level: int, symmetric: bool) -> dict[str, ir.Node]:
    """Run onnxruntime's quantizer on a model holding one MatMul per group (weights concatenated
    along N); returns the `MatMulNBits` node of each group, by the group's index."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    inputs, nodes, weights = {}, [], []
    for i, group in enumerate(groups):
        name = group[0].activation.name
        a = inputs.setdefault(name, ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT)))
        array = np.concatenate([linear.weight_kn() for linear in group], axis=1) if len(group) > 1 else group[0].weight_kn()
        w = ir.Value(name=f"w{i}", const_value=ir.tensor(array, name=f"w{i}"))
        weights.append(w)
        node = ir.node("MatMul", [a, w], name=f"group{i}")
        node.outputs[0].name = f"group{i}"
        node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        nodes.append(node)
    graph = ir.Graph(list(inputs.values()), [n.outputs[0] for n in nodes], nodes=nodes, initializers=weights, opset_imports={"": 21})
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level)
    quantizer.process()
    result = ir.serde.deserialize_model(quantizer.model.model)
    return {node.outputs[0].name: node for node in result.graph if node.op_type == "MatMulNBits"}


def produce(
    model: ir.Model,
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = True,
    include_lm_head: bool = True,
    fusions: bool = True,
    pack: bool = False,
) -> VariantSpec:
    """`pack` (off by default) puts same-input linears in one `MatMulNBits`: on this 2-core AVX2
    machine it measured slightly slower for int4 (p10 step 43.1 ms vs 39.5 ms unpacked, SmolLM
    shape), while it helps int8; the ort-cpu rewrites (`fusions`) measured 15% faster."""
    linears = find_linears(model.graph, include_lm_head)
    groups = group_linears(linears, pack)
    quantized = _quantize(groups, block_size, accuracy_level, symmetric)
    prefix = owned_prefix(NAME)
    body_inputs: dict[str, ir.Value] = {}
    owned: dict[str, ir.TensorProtocol] = {}
    nodes: list[ir.Node] = []
    outputs: list[ir.Value] = []
    replaced = 0
    for i, group in enumerate(groups):
        qnode = quantized.get(f"group{i}")
        if qnode is None:
            logger.warning("ort-cpu-int4: onnxruntime's quantizer left %s in fp32; it stays the main graph's.", group[0].node.name)
            continue
        first = group[0]
        stem = first.weight.name + (f"+{len(group) - 1}" if len(group) > 1 else "")
        args = [body_inputs.setdefault(first.activation.name, ir.Value(name=first.activation.name))]
        for suffix, value in zip(("qweight", "scales", "zero_points"), qnode.inputs[1:]):
            name = f"{prefix}{stem}.{suffix}"
            owned[name] = ir.tensor(value.const_value.numpy(), name=name)
            args.append(body_inputs.setdefault(name, ir.Value(name=name)))
        if first.bias is not None:  # MatMulNBits inputs: A, B, scales, zero_points, g_idx, bias
            args += [None] * (5 - len(args)) + [body_inputs.setdefault(first.bias.name, ir.Value(name=first.bias.name))]
        node = ir.Node("com.microsoft", "MatMulNBits", args, attributes=list(qnode.attributes.values()), name=f"{first.node.name or first.output.name}_q4")
        extra, named = name_group_outputs(node.outputs[0], group, f"{NAME}/packed{i}")
        nodes += [node, *extra]
        outputs += named
        replaced += len(group)
    body = ir.Graph(list(body_inputs.values()), outputs, nodes=nodes)
    if fusions:  # the ort-cpu rewrites too: this is the whole onnxruntime-CPU form, not just its weights
        body = merge_bodies(body, ort_cpu_region(model, NAME)[0])
    return VariantSpec(
        name=NAME,
        body=body,
        providers=["CPUExecutionProvider"],
        opset_imports={"": model.opset_imports.get("", 23), "com.microsoft": 1},
        owned=owned,
        priority=30,
        description=f"{replaced} linear layers as {sum(1 for n in nodes if n.op_type == 'MatMulNBits')} com.microsoft::MatMulNBits "
        f"(same-input layers packed), int4 blocks of {block_size}, {'symmetric' if symmetric else 'asymmetric'}, "
        f"accuracy_level {accuracy_level}",
        tolerance="int4 weight-only: logits differ from the main graph by the quantization error; greedy tokens mostly agree (see docs/variants.md)",
    )
