"""Block-wise quantized weights in standard ONNX: `DequantizeLinear` (opset >= 21, blocked) feeding
`MatMul`, the same weights `_nbits.QuantizedWeight` holds for `com.microsoft::MatMulNBits`.

`DequantizeLinear(q, scale[, zero_point], axis=0, block_size=B)` gives the float `[K, N]` weight
`W[k, n] = (q[k, n] - zp[k // B, n]) * scale[k // B, n]`, the same blocks (B consecutive k of one
output column n) and the same numbers as `MatMulNBits`; only the layout differs (K-major, ONNX's
4-bit packing: element i in the low nibble of byte i // 2). Guarantees:

- the dequantized weight equals `_nbits.dequantize(qw)` exactly (same codes, scales, zero points);
- asymmetric blocks are `uint4` / `uint8` with a zero point of the same type; symmetric ones are
  `int4` / `int8` without one (MatMulNBits' implicit zero point `2**(bits-1)` subtracted from the
  codes), so no zero-point bytes are stored;
- `q` is `[K, N]` and `scale` / `zero_point` `[ceil(K / B), N]`, as the ONNX spec's blocked form
  and onnxruntime's `DQMatMulToMatMulNBits` fusion expect (it turns each pair back into one
  `MatMulNBits` at session creation; `session.qdq_matmulnbits_accuracy_level` sets its accuracy).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._nbits import QuantizedWeight, unpack_codes

__all__ = ["qdq_tensors", "dequantize_matmul"]


def _pack4(values: np.ndarray) -> np.ndarray:
    """ONNX's 4-bit packing of `values` (uint8 nibbles, any shape) flattened in row-major order."""
    flat = values.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return flat[0::2] | (flat[1::2] << 4)


def _tensor(codes: np.ndarray, bits: int, signed: bool, name: str) -> ir.TensorProtocol:
    """`codes` (integers in the type's range) as an int4/uint4/int8/uint8 tensor."""
    if bits == 8:
        return ir.tensor(codes.astype(np.int8 if signed else np.uint8), name=name)
    dtype = ir.DataType.INT4 if signed else ir.DataType.UINT4
    return ir.PackedTensor(_pack4(codes.astype(np.int8).view(np.uint8)), dtype, shape=list(codes.shape), name=name)


def qdq_tensors(qw: QuantizedWeight, stem: str) -> tuple[ir.TensorProtocol, ir.TensorProtocol, ir.TensorProtocol | None]:
    """(quantized weight `[K, N]`, scale `[k_blocks, N]`, zero point `[k_blocks, N]` or None) for
    `DequantizeLinear(axis=0, block_size=qw.block_size)`, named `<stem>.qweight|scales|zero_points`."""
    k_blocks = qw.packed.shape[1]
    codes = unpack_codes(qw.packed, qw.bits, qw.block_size).astype(np.int16).reshape(qw.n, -1)[:, : qw.k].T  # [K, N]
    scale = np.ascontiguousarray(qw.scales.reshape(qw.n, k_blocks).T)
    if qw.zero_points is None:  # symmetric: MatMulNBits' implicit zero point 2**(bits-1) moves into signed codes
        signed = codes - (1 << (qw.bits - 1))
        return _tensor(np.ascontiguousarray(signed), qw.bits, True, f"{stem}.qweight"), ir.tensor(scale, name=f"{stem}.scales"), None
    zero = unpack_codes(qw.zero_points.reshape(qw.n, -1), qw.bits, k_blocks).T
    return (
        _tensor(np.ascontiguousarray(codes), qw.bits, False, f"{stem}.qweight"),
        ir.tensor(scale, name=f"{stem}.scales"),
        _tensor(np.ascontiguousarray(zero), qw.bits, False, f"{stem}.zero_points"),
    )


def dequantize_matmul(
    activation: ir.Value, qw: QuantizedWeight, owned_name: str,
    inputs: dict[str, ir.Value], owned: dict[str, ir.TensorProtocol], bias: ir.Value | None = None, name: str = "",
) -> list[ir.Node]:
    """`MatMul(activation, DequantizeLinear(q, scale[, zp]))` (`+ bias`), the weights owned
    initializers named `<owned_name>.qweight|scales|zero_points`; the last node's output is the
    linear's. Region inputs are shared through `inputs` by name (`activation` is the region's own
    value: one of `inputs`, or computed in the region)."""
    args = []
    for tensor in qdq_tensors(qw, owned_name):
        if tensor is None:
            continue
        owned[tensor.name] = tensor
        args.append(inputs.setdefault(tensor.name, ir.Value(name=tensor.name)))
    dq = ir.node(
        "DequantizeLinear", args, attributes={"axis": 0, "block_size": qw.block_size}, name=f"{name}.dequantize"
    )
    dq.outputs[0].name = f"{owned_name}.weight"
    matmul = ir.node("MatMul", [activation, dq.outputs[0]], name=name)
    nodes = [dq, matmul]
    if bias is not None:
        matmul.outputs[0].name = f"{owned_name}.matmul"
        nodes.append(ir.node("Add", [matmul.outputs[0], inputs.setdefault(bias.name, ir.Value(name=bias.name))], name=f"{name}.bias"))
    return nodes
