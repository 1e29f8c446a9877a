"""An independent reading of the quantized variants: dequantize each quantized matmul's weights
the way onnxruntime's contrib-op specs define them, and map them back to the main-graph linears
they replace. Tests compare those weights with the main graph's (a swapped scale or a transposed
weight is off by far more than the rounding step) and run the main graph on them (the fp32 graph
the variant approximates, which leaves only the kernels' activation quantization as error)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimum_onnx23.variants.producers._linear import find_linears

__all__ = ["Dequantized", "dequantize_variant", "with_weights"]


@dataclass
class Dequantized:
    weight: np.ndarray  # [K, N] as the kernel computes it
    step: np.ndarray  # [K, N]: the quantization step |scale| of each element


def _matmul_nbits(node: ir.Node) -> Dequantized:
    """com.microsoft::MatMulNBits: B [N, blocks, block_size * bits / 8] uint8, low nibble first;
    scales [N * blocks]; zero points packed like B (default 2^(bits-1))."""
    attrs = node.attributes
    k, n, bits, block = (attrs.get_int(a) for a in ("K", "N", "bits", "block_size"))
    assert bits in (4, 8), bits

    def unpack(packed: np.ndarray, count: int) -> np.ndarray:
        if bits == 8:
            return packed[:, :count].astype(np.float32)
        return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :count].astype(np.float32)

    q = unpack(node.inputs[1].const_value.numpy().reshape(n, -1), k)  # [N, K]
    blocks = -(-k // block)
    scales = node.inputs[2].const_value.numpy().reshape(n, blocks)
    zero = np.full((n, blocks), float(2 ** (bits - 1)), np.float32)
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        zero = unpack(node.inputs[3].const_value.numpy().reshape(n, -1), blocks)
    per_k = np.arange(k) // block
    step = scales[:, per_k]  # [N, K]
    return Dequantized(((q - zero[:, per_k]) * step).T, np.abs(step.T))


def _dynamic_quantize_matmul(node: ir.Node) -> Dequantized:
    """com.microsoft::DynamicQuantizeMatMul: B int8 [K, N], b_scale [N] or scalar, b_zero_point likewise."""
    b = node.inputs[1].const_value.numpy().astype(np.float32)
    scale = node.inputs[2].const_value.numpy().astype(np.float32)
    zero = np.zeros_like(scale)
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        zero = node.inputs[3].const_value.numpy().astype(np.float32)
    step = np.broadcast_to(np.abs(scale), b.shape)
    return Dequantized((b - zero) * scale, np.ascontiguousarray(step))


_DEQUANTIZE = {"MatMulNBits": _matmul_nbits, "DynamicQuantizeMatMul": _dynamic_quantize_matmul}


def dequantize_variant(main: ir.Model, selected: ir.Model) -> dict[str, Dequantized]:
    """{main-graph weight name: its dequantized replacement} for every quantized matmul of
    `selected` (a variant selected into a plain model). A matmul's output is the replaced linear's
    output, or is split (in order, by the Split's sizes) into several linears' outputs."""
    linears = {linear.output.name: linear for linear in find_linears(main.graph)}
    found: dict[str, Dequantized] = {}
    for node in selected.graph:
        if node.domain != "com.microsoft" or node.op_type not in _DEQUANTIZE:
            continue
        deq = _DEQUANTIZE[node.op_type](node)
        activation = node.inputs[0]
        smoothing = activation.producer()
        if smoothing is not None and smoothing.op_type == "Mul" and smoothing.inputs[1].name.endswith(".smooth"):
            # activation smoothing: (x * (1/s)) @ (s * W), so the main graph's basis is (1/s) * (s * W)
            inverse = smoothing.inputs[1].const_value.numpy().astype(np.float32)[:, None]
            deq = Dequantized(deq.weight * inverse, deq.step * inverse)
            activation = smoothing.inputs[0]
        output = node.outputs[0]
        if output.name in linears:
            targets, sizes = [output.name], [deq.weight.shape[1]]
        else:  # packed: Split(output, sizes) back into the linears' outputs
            (split,) = [use for use, _ in output.uses() if use.op_type == "Split"]
            targets = [value.name for value in split.outputs]
            sizes = ir.convenience.get_const_tensor(split.inputs[1]).numpy().tolist()
        assert sum(sizes) == deq.weight.shape[1], (node.name, sizes, deq.weight.shape)
        start = 0
        for name, size in zip(targets, sizes):
            linear = linears[name]  # KeyError: the matmul computes no main-graph linear's output
            assert activation.name == linear.activation.name, f"{node.name} reads {activation.name}"
            found[linear.weight.name] = Dequantized(deq.weight[:, start : start + size], deq.step[:, start : start + size])
            start += size
    return found


def with_weights(main: ir.Model, weights: dict[str, np.ndarray]) -> ir.Model:
    """`main` (modified in place) with its linears' [K, N] weights replaced by `weights`. A weight
    that is also read elsewhere (a tied lm_head's embedding matrix, which the embedding Gather
    keeps reading in full precision) gets a new initializer for the linear alone."""
    for linear in find_linears(main.graph):
        if linear.weight.name not in weights:
            continue
        array = weights[linear.weight.name]
        tensor = ir.tensor(np.ascontiguousarray(array.T if linear.transposed else array), name=f"{linear.weight.name}.dequantized")
        readers = [node for node, _ in linear.weight.uses()]
        if len(readers) == 1:
            tensor.name = linear.weight.name
            linear.weight.const_value = tensor
            continue
        value = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        main.graph.register_initializer(value)
        reader = linear.node if linear.node in readers else linear.node.inputs[1].producer()  # MatMul(x, Transpose(W))
        reader.replace_input_with(list(reader.inputs).index(linear.weight), value)
    return main
