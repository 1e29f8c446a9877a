"""Block-wise weight quantization in onnxruntime's `com.microsoft::MatMulNBits` layout.

`MatMulNBits(A, B, scales[, zero_points])` computes `A @ W` with `W[k, n] = (q - zp) * scale` per
block of `block_size` consecutive k of one output column n. Layout (onnxruntime's contrib-op doc):
`B` uint8 `[N, k_blocks, block_size * bits / 8]`, element k in the low bits first; `scales`
`[N * k_blocks]`; `zero_points` uint8, `bits`-wide values packed the same way per column
(`[N * ceil(k_blocks * bits / 8)]`), absent for symmetric blocks (zero point `2**(bits-1)`).

Done here in numpy rather than by onnxruntime's `MatMulNBitsQuantizer` because the scale rules
decide the quality on real checkpoints:

- symmetric int8 uses `scale = absmax / 127` (llama.cpp's Q8_0 rule; onnxruntime's quantizer maps
  the largest value to -128 instead), so a tensor that *was* Q8_0 comes back bit for bit;
- asymmetric blocks keep zero inside the range (the zero point must be an integer in
  `[0, 2**bits - 1]`) and, with `search`, try a few scales per block and keep the one with the
  smallest squared error, weighted by the activation's mean square per input channel when
  `importance` is given (a calibrated error, after llama.cpp's importance matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

__all__ = ["QuantizedWeight", "unpack_codes", "block_params", "quantize_blockwise", "quantize_gptq", "dequantize", "matmul_nbits"]


@dataclass
class QuantizedWeight:
    packed: np.ndarray  # uint8 [N, k_blocks, block_size * bits // 8]
    scales: np.ndarray  # float32 [N * k_blocks]
    zero_points: np.ndarray | None  # uint8 packed per column, None for symmetric
    bits: int
    block_size: int
    k: int
    n: int


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values < 2**bits along the last axis, packed low bits first (last axis shrinks by 8/bits)."""
    if bits == 8:
        return values.astype(np.uint8)
    per_byte = 8 // bits
    pad = (-values.shape[-1]) % per_byte
    if pad:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], pad), values.dtype)], axis=-1)
    values = values.reshape(*values.shape[:-1], -1, per_byte).astype(np.uint8)
    out = np.zeros(values.shape[:-1], np.uint8)
    for j in range(per_byte):
        out |= values[..., j] << (bits * j)
    return out


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """`count` codes along the last axis of `_pack`ed bytes (the inverse of `_pack`), as uint8."""
    if bits == 8:
        return packed[..., :count]
    per_byte = 8 // bits
    parts = [(packed >> (bits * j)) & ((1 << bits) - 1) for j in range(per_byte)]
    return np.stack(parts, axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def _rtn(blocks: np.ndarray, scale: np.ndarray, zero: np.ndarray, qmax: int) -> np.ndarray:
    return np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], 0, qmax)


def block_params(
    blocks: np.ndarray, bits: int, symmetric: bool, search: bool = False, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) as float32 arrays of `blocks.shape[:-1]` for blocks along the last axis.

    `search` (asymmetric only) looks for the scale, as a fraction of the min-max one in [0.80,
    1.10], and the zero point with the smallest squared error weighted by `weights` (broadcast
    against `blocks`; e.g. the activation's mean square per input channel): 7 fractions 0.05 apart
    with the nearest zero point, then around each block's best the fractions 0.025 and 0.0125 away
    with the zero point's neighbours too (17 tries; on SmolLM2 the same error as a full grid of 93).
    """
    qmax = (1 << bits) - 1
    half = 1 << (bits - 1)
    if symmetric:
        if bits == 8:
            scale = np.abs(blocks).max(-1) / 127.0  # Q8_0: q in [-127, 127]
        else:
            # the largest-magnitude value maps to -8 exactly (MLAS, llama.cpp Q4_0): 16 levels used
            idx = np.abs(blocks).argmax(-1)
            scale = np.take_along_axis(blocks, idx[..., None], -1)[..., 0] / -half
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        return scale, np.full(scale.shape, half, np.float32)
    lo = np.minimum(blocks.min(-1), 0.0)
    span = np.maximum(blocks.max(-1), 0.0) - lo
    scale = (span / qmax).astype(np.float32)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    zero = np.clip(np.rint(-lo / scale), 0, qmax).astype(np.float32)
    if not search:
        return scale, zero
    w = np.ones(blocks.shape[-1], np.float32) if weights is None else weights
    best_factor = np.ones(scale.shape, np.float32)
    best = None

    def consider(factor, shift):
        nonlocal best, scale, zero, best_factor
        s = (span * factor / qmax).astype(np.float32)
        s = np.where(s == 0, 1.0, s).astype(np.float32)
        z = np.clip(np.rint(-lo / s) + shift, 0, qmax).astype(np.float32)
        x = blocks / s[..., None]
        err = (((np.clip(np.rint(x) + z[..., None], 0, qmax) - z[..., None]) - x) ** 2 * w).sum(-1) * (s * s)
        if best is None:
            best, scale, zero, best_factor = err, s, z, np.broadcast_to(np.float32(factor), s.shape).copy()
            return
        better = err < best
        best = np.where(better, err, best)
        scale = np.where(better, s, scale)
        zero = np.where(better, z, zero)
        best_factor = np.where(better, factor, best_factor)

    for factor in np.linspace(0.80, 1.10, 7, dtype=np.float32):
        consider(factor, 0)
    center = best_factor.copy()
    for shift in (-1, 1):
        consider(center, shift)
    for step in (0.025, -0.025):
        for shift in (-1, 0, 1):
            consider(center + np.float32(step), shift)
    center = best_factor.copy()
    for step in (0.0125, -0.0125):
        consider(center + np.float32(step), 0)
    return scale, zero


_CHUNK_ELEMENTS = 1 << 22  # weights quantized 16 MB of float32 at a time


def _padded_blocks(weight_kn: np.ndarray, block_size: int) -> np.ndarray:
    """`[N, k_blocks, block_size]` float32, K zero-padded to whole blocks."""
    k, n = weight_kn.shape
    k_blocks = -(-k // block_size)
    w = np.zeros((n, k_blocks * block_size), np.float32)
    w[:, :k] = weight_kn.T
    return w.reshape(n, k_blocks, block_size)


def _result(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, block_size: int, symmetric: bool, k: int) -> QuantizedWeight:
    packed = _pack(q.astype(np.uint8), bits)
    zero_points = None if symmetric else _pack(zero.astype(np.uint8), bits).reshape(-1)
    return QuantizedWeight(packed, scale.reshape(-1).astype(np.float32), zero_points, bits, block_size, k, q.shape[0])


def quantize_blockwise(
    weight_kn: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    search: bool = False,
    importance: np.ndarray | None = None,
) -> QuantizedWeight:
    """Round-to-nearest `MatMulNBits` blocks along K of a float32 `[K, N]` weight (y = x @ W).

    `importance` (`[K]`, e.g. the mean square of the activation per input channel) weights the
    squared error `search` minimizes; without it every input channel counts the same.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    k, n = weight_kn.shape
    if n > (step := max(1, _CHUNK_ELEMENTS // max(k, 1))):
        # Columns are independent blocks: quantized a slice at a time, the search's float
        # temporaries (several times the slice) stay bounded whatever the weight's size.
        parts = [quantize_blockwise(weight_kn[:, i : i + step], bits, block_size, symmetric, search, importance) for i in range(0, n, step)]
        return QuantizedWeight(
            np.concatenate([p.packed for p in parts]), np.concatenate([p.scales for p in parts]),
            None if symmetric else np.concatenate([p.zero_points for p in parts]), bits, block_size, k, n,
        )
    blocks = _padded_blocks(weight_kn, block_size)
    weights = None
    if importance is not None:
        weights = np.zeros(blocks.shape[1] * block_size, np.float32)
        weights[:k] = np.maximum(importance, 1e-12)
        weights = weights.reshape(blocks.shape[1:])
    scale, zero = block_params(blocks, bits, symmetric, search, weights)
    q = _rtn(blocks, scale, zero, (1 << bits) - 1)
    return _result(q, scale, zero, bits, block_size, symmetric, k)


def quantize_gptq(
    weights_kn: list[np.ndarray], hessians: list[np.ndarray], bits: int, block_size: int, symmetric: bool = False,
    search: bool = True, damp: float = 0.01,
) -> list[QuantizedWeight]:
    """GPTQ (Frantar et al. 2022) into `MatMulNBits` blocks, for several weights of one shape at
    once (e.g. the same projection of every layer, each with its own Hessian).

    Input channels are quantized in order and each one's rounding error, scaled by the inverse
    Hessian `H = E[x x^T]` of the layer's input, is pushed onto the channels not yet quantized, so
    the *output* error `x @ (W - Q)` is what gets minimized. A block's scale and zero point are
    chosen (`block_params`, errors weighted by `diag(H)`) when its first channel is reached, from
    the weights as updated so far; updates beyond the current block are applied once per block.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of small ops: thread hand-offs cost more than they give
    try:
        return _gptq(torch, weights_kn, hessians, bits, block_size, symmetric, search, damp)
    finally:
        torch.set_num_threads(threads)


def _gptq(torch, weights_kn, hessians, bits, block_size, symmetric, search, damp) -> list[QuantizedWeight]:
    count = len(weights_kn)
    k, n = weights_kn[0].shape
    k_blocks = -(-k // block_size)
    kp = k_blocks * block_size
    w = torch.zeros((count, kp, n), dtype=torch.float32)  # K-major: a channel's weights are one row
    hinv = torch.empty((count, kp, kp), dtype=torch.float32)
    importance = np.empty((count, kp), np.float32)
    for j, (weight, hessian) in enumerate(zip(weights_kn, hessians)):
        w[j, :k] = torch.from_numpy(np.array(weight, dtype=np.float32))
        h = torch.eye(kp, dtype=torch.float64)
        h[:k, :k] = torch.from_numpy(hessian.astype(np.float64))
        dead = torch.diag(h) == 0
        h[dead, dead] = 1.0
        w[j, dead] = 0.0
        importance[j] = torch.diag(h).numpy()
        h += damp * torch.mean(torch.diag(h)) * torch.eye(kp, dtype=torch.float64)
        hinv[j] = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).to(torch.float32)
    qmax = float((1 << bits) - 1)
    codes = torch.zeros((count, kp, n), dtype=torch.float32)
    scales = np.zeros((count, n, k_blocks), np.float32)
    zeros = np.zeros((count, n, k_blocks), np.float32)
    for b in range(k_blocks):
        i1, i2 = b * block_size, (b + 1) * block_size
        w1 = w[:, i1:i2].clone()
        h1 = hinv[:, i1:i2, i1:i2]
        s, z = block_params(w1.numpy().transpose(0, 2, 1), bits, symmetric, search, importance[:, None, i1:i2])
        scales[:, :, b], zeros[:, :, b] = s, z
        s_t, z_t = torch.from_numpy(s), torch.from_numpy(z)
        err1 = torch.empty_like(w1)
        for i in range(block_size):
            q = torch.clamp(torch.round(w1[:, i] / s_t) + z_t, 0.0, qmax)
            codes[:, i1 + i] = q
            err = (w1[:, i] - (q - z_t) * s_t) / h1[:, i, i, None]
            w1[:, i:].baddbmm_(h1[:, i, i:, None], err[:, None, :], alpha=-1.0)
            err1[:, i] = err
        if i2 < kp:
            w[:, i2:].baddbmm_(hinv[:, i1:i2, i2:].transpose(1, 2), err1, alpha=-1.0)
    q = codes.numpy().transpose(0, 2, 1).reshape(count, n, k_blocks, block_size)
    return [_result(q[j], scales[j], zeros[j], bits, block_size, symmetric, k) for j in range(count)]


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """The float32 `[K, N]` weight `MatMulNBits` computes with."""
    k_blocks = qw.packed.shape[1]
    q = unpack_codes(qw.packed, qw.bits, qw.block_size).astype(np.float32)
    if qw.zero_points is None:
        zero = np.full((qw.n, k_blocks), 1 << (qw.bits - 1), np.float32)
    else:
        per_column = qw.zero_points.reshape(qw.n, -1)
        zero = unpack_codes(per_column, qw.bits, k_blocks).astype(np.float32)
    w = (q - zero[..., None]) * qw.scales.reshape(qw.n, k_blocks, 1)
    return np.ascontiguousarray(w.reshape(qw.n, -1)[:, : qw.k].T)


def matmul_nbits(
    activation: ir.Value, qw: QuantizedWeight, owned_name: str, accuracy_level: int,
    inputs: dict[str, ir.Value], owned: dict[str, ir.TensorProtocol], bias: ir.Value | None = None, name: str = "",
) -> ir.Node:
    """A `MatMulNBits` node on `activation` whose weights become owned initializers named
    `<owned_name>.qweight|scales|zero_points`; region inputs are shared through `inputs` by name
    (`activation` is the region's own value: one of `inputs`, or computed in the region)."""
    args = [activation]
    for suffix, array in (("qweight", qw.packed), ("scales", qw.scales), ("zero_points", qw.zero_points)):
        if array is None:
            args.append(None)
            continue
        tensor_name = f"{owned_name}.{suffix}"
        owned[tensor_name] = ir.tensor(array, name=tensor_name)
        args.append(inputs.setdefault(tensor_name, ir.Value(name=tensor_name)))
    if bias is not None:  # MatMulNBits inputs: A, B, scales, zero_points, g_idx, bias
        args += [None, inputs.setdefault(bias.name, ir.Value(name=bias.name))]
    while args[-1] is None:
        args.pop()
    attributes = [
        ir.AttrInt64("K", qw.k), ir.AttrInt64("N", qw.n), ir.AttrInt64("bits", qw.bits),
        ir.AttrInt64("block_size", qw.block_size), ir.AttrInt64("accuracy_level", accuracy_level),
    ]
    return ir.Node("com.microsoft", "MatMulNBits", args, attributes=attributes, name=name)
