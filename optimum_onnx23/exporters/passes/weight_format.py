"""`--weight-format int4|int8`: the main graph's linear weights quantized as they are written.

Each linear layer's float weight `W` (`MatMul(x, W)`, the tied lm_head's `MatMul(x, Transpose(E))`)
becomes `MatMul(x, DequantizeLinear(q, scale[, zero_point], axis=0, block_size=32))`: the `int4`
variant's standard-op form and quantizer (`variants.producers.blockwise`: round-to-nearest,
asymmetric `uint4` blocks; `int8` blocks symmetric). The quantized tensors are `onnx_ir.LazyTensor`s:
a weight is read (from the traced model, or from the checkpoint with `--streamed`), quantized and
dropped when `model.onnx_data` is written, so neither the fp32 graph nor all fp32 weights at once
are ever written or held. The embedding table (`Gather`) stays float: `E` of a tied lm_head is
quantized for the MatMul only.

Guarantees:
- The lm_head (the last linear whose output width is the vocabulary) gets `lm_head_bits`
  (8 by default: measured on SmolLM2-135M, docs/export.md), the other linears `bits`.
- `fake_quantized(W, bits)` is the float weight `DequantizeLinear` computes for the same torch weight
  `W` (`[out, in]`), bit for bit, so the validation's PyTorch reference runs on the same weights.
- `apply` returns how many linears were quantized per bit width; 0 linears is refused in one line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch

from ...errors import InvalidArgumentError
from ...variants.producers import blockwise

__all__ = ["BLOCK_SIZE", "LM_HEAD_BITS", "WEIGHT_FORMATS", "FakeQuantizer", "QuantizedLinears", "apply", "fake_quantized"]

WEIGHT_FORMATS = ("fp32", "int8", "int4")  # optimum-intel's --weight-format names; fp32: the export dtype's weights
BITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = 32
LM_HEAD_BITS = 8


@dataclass
class QuantizedLinears:
    """What `apply` did: linears per bit width, and their quantized bytes (scales and zero points included)."""

    counts: dict[int, int] = field(default_factory=dict)
    nbytes: int = 0
    float_nbytes: int = 0  # the fp32 weights they replace

    def describe(self) -> str:
        parts = ", ".join(f"{n} int{b}" for b, n in sorted(self.counts.items(), reverse=True))
        return f"{sum(self.counts.values())} linears as DequantizeLinear + MatMul ({parts}): {self.nbytes / 1e9:.2f} GB for {self.float_nbytes / 1e9:.2f} GB of fp32"


def fake_quantized(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The torch linear weight `[out, in]` as the graph computes it after `apply` (float32)."""
    return _dequantized_torch(blockwise.quantize(weight.detach().to(torch.float32).numpy().T, bits, BLOCK_SIZE))


class FakeQuantizer:
    """`(parameter name, tensor) -> tensor` for a layer-by-layer PyTorch reference: the weights
    named in `bits` come back fake-quantized. Each one's quantized form is kept (about 0.64 bytes
    per weight in int4), so a layer read again (once per validation shape, once per generated
    token) is only dequantized: at 8 B, quantizing costs ~20 s a layer, dequantizing ~1 s."""

    def __init__(self, bits: dict[str, int]):
        self.bits = bits
        self.kept: dict[str, blockwise.QuantizedWeight] = {}

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        bits = self.bits.get(name)
        if bits is None:
            return tensor
        qw = self.kept.get(name)
        if qw is None:
            qw = self.kept[name] = blockwise.quantize(tensor.detach().to(torch.float32).numpy().T, bits, BLOCK_SIZE)
        return _dequantized_torch(qw)


_NIBBLES = torch.stack([torch.arange(256) & 0x0F, torch.arange(256) >> 4], dim=-1).to(torch.float32)  # byte -> (low, high)


def _codes(packed: np.ndarray, bits: int, count: int) -> torch.Tensor:
    """`_nbits.unpack_codes(packed, bits, count)` as float32, through a byte -> two nibbles table."""
    flat = torch.from_numpy(np.ascontiguousarray(packed))
    if bits == 8:
        return flat[..., :count].to(torch.float32)
    codes = torch.nn.functional.embedding(flat.reshape(-1).to(torch.int32), _NIBBLES)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count]


def _dequantized_torch(qw: blockwise.QuantizedWeight) -> torch.Tensor:
    """`blockwise.dequantize(qw).T` (`[N, K]`, the torch layout): the same float32 operations in
    the same order, so bit for bit the same, ~4x faster than numpy (an 8 B layer in ~2 s on 2 cores)."""
    k_blocks = qw.packed.shape[1]
    w = _codes(qw.packed, qw.bits, qw.block_size)  # [N, k_blocks, block]
    if qw.zero_points is None:
        w.sub_(float(1 << (qw.bits - 1)))
    else:
        w.sub_(_codes(qw.zero_points.reshape(qw.n, -1), qw.bits, k_blocks)[..., None])
    w.mul_(torch.from_numpy(qw.scales).reshape(qw.n, k_blocks, 1))
    return w.reshape(qw.n, -1)[:, : qw.k].contiguous()


class _Shared:
    """One linear's quantization, computed when the first of its tensors is written and dropped
    when the last one is (the three LazyTensors of a weight read it once)."""

    def __init__(self, source: ir.TensorProtocol, transposed: bool, bits: int, stem: str, parts: int):
        self.source, self.transposed, self.bits, self.stem, self.parts = source, transposed, bits, stem, parts
        self.lock = threading.Lock()
        self.tensors: tuple | None = None
        self.taken = 0

    def take(self, index: int) -> ir.TensorProtocol:
        with self.lock:
            if self.tensors is None:
                array = self.source.numpy()
                weight_kn = array.T if self.transposed else array
                self.tensors = blockwise.qdq_tensors(blockwise.quantize(weight_kn, self.bits, BLOCK_SIZE), self.stem)
                del array, weight_kn
            tensor = self.tensors[index]
            self.taken += 1
            if self.taken == self.parts:
                self.tensors = None
                self.source = None  # the float weight (a lazy read, or the traced layer's) is no longer referenced
            return tensor


def _lm_head(linears: list[blockwise.Linear], vocab_size: int | None) -> blockwise.Linear | None:
    heads = [linear for linear in linears if vocab_size and linear.weight_kn_shape()[1] == vocab_size]
    return heads[-1] if heads else None


def apply(model: ir.Model, bits: int, vocab_size: int | None, lm_head_bits: int = LM_HEAD_BITS) -> QuantizedLinears:
    """Rewrite every float linear of `model`'s main graph as blocked `DequantizeLinear` + `MatMul`
    with lazily quantized initializers (nothing is read or quantized before the graph is saved)."""
    graph = model.graph
    linears = blockwise.find_linears(graph, include_lm_head=True)
    if not linears:
        raise InvalidArgumentError("--weight-format: this graph has no MatMul with a constant float weight to quantize; export without it.")
    head = _lm_head(linears, vocab_size)
    done = QuantizedLinears()
    for linear in linears:
        width = lm_head_bits if linear is head else bits
        k, n = linear.weight_kn_shape()
        k_blocks = -(-k // BLOCK_SIZE)
        stem = linear.weight.name or f"{linear.node.name}.weight"
        symmetric = width == 8
        shapes = [(ir.DataType.INT8 if symmetric else ir.DataType.UINT4, (k, n)), (ir.DataType.FLOAT, (k_blocks, n))]
        if not symmetric:
            shapes.append((ir.DataType.UINT4, (k_blocks, n)))
        shared = _Shared(linear.weight.const_value, linear.transposed, width, stem, len(shapes))
        names = [f"{stem}.qweight", f"{stem}.scales", f"{stem}.zero_points"][: len(shapes)]
        args = []
        for index, (name, (dtype, shape)) in enumerate(zip(names, shapes)):
            tensor = ir.LazyTensor(lambda s=shared, i=index: s.take(i), dtype=dtype, shape=ir.Shape(shape), name=name)
            value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape), const_value=tensor)
            graph.register_initializer(value)
            args.append(value)
            done.nbytes += tensor.nbytes
        done.float_nbytes += k * n * 4
        dq = ir.node("DequantizeLinear", args, attributes={"axis": 0, "block_size": BLOCK_SIZE}, name=f"{linear.node.name}.dequantize")
        dq.outputs[0].name = f"{stem}.dequantized"
        graph.insert_before(linear.node, dq)
        old = linear.node.inputs[1]
        linear.node.replace_input_with(1, dq.outputs[0])
        if linear.node.op_type == "Gemm":  # GPT-2's Conv1D: the dequantized weight is [K, N]
            linear.node.attributes["transB"] = ir.AttrInt64("transB", 0)
        if linear.transposed and not old.uses() and old.producer() is not None:
            graph.remove(old.producer(), safe=True)
        if not linear.weight.uses():
            graph.initializers.pop(linear.weight.name)
        done.counts[width] = done.counts.get(width, 0) + 1
    return done
