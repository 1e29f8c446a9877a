"""Round-to-nearest block-wise quantization of one weight, for code outside the variant producers
(the export's `--weight-format`): the linears the variants find (`_linear.find_linears`), the `int4` variant's quantizer (`_nbits.quantize_blockwise`) and
its standard-op tensors (`_qdq.qdq_tensors`), unchanged, behind a public name.

Guarantees: `dequantize(quantize(w, bits))` is the float32 weight `DequantizeLinear` gives from
`qdq_tensors(quantize(w, bits), stem)`, bit for bit (both use the same codes, scales and zero points).
4-bit blocks are asymmetric (`uint4` codes and zero points), 8-bit ones symmetric (`int8`, absmax / 127,
no zero point): the `int4` / `int8` variants' schemes.
"""

from __future__ import annotations

import numpy as np

from ._linear import Linear, find_linears
from ._nbits import QuantizedWeight, dequantize
from ._qdq import qdq_tensors

__all__ = ["Linear", "QuantizedWeight", "dequantize", "find_linears", "qdq_tensors", "quantize"]


def quantize(weight_kn: np.ndarray, bits: int, block_size: int = 32) -> QuantizedWeight:
    """RTN blocks of `block_size` along K of a float32 `[K, N]` weight (y = x @ W)."""
    from ._nbits import quantize_blockwise

    return quantize_blockwise(np.ascontiguousarray(weight_kn, dtype=np.float32), bits, block_size, symmetric=bits == 8, search=False)
