"""`ort-cpu-int8`: every linear layer (the tied lm_head included) as onnxruntime's `MatMulNBits`
with block-wise int8 weights.

Weight-only: each block of 32 input channels of an output column has its own scale, and
`accuracy_level=4` quantizes the activation per block of 32 too, so one outlier channel costs
one block its precision, not the whole row. The variant this replaced (`DynamicQuantizeMatMul`:
per-column 7-bit weights, activation quantized per tensor to uint8) measured +70% perplexity on
the real SmolLM2-135M-Instruct; the per-tensor activation scale is what lost it (see
docs/variants.md). The int8 weights and scales are the variant's own; all else is the main graph's.
"""

from __future__ import annotations

import onnx_ir as ir

from ._quantized import Scheme, quantized_region
from .spec import VariantSpec

__all__ = ["NAME", "produce"]

NAME = "ort-cpu-int8"


def produce(
    model: ir.Model,
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = True,
    include_lm_head: bool = True,
    fusions: bool = True,
    pack: bool = False,
) -> VariantSpec:
    """Symmetric int8 blocks use llama.cpp's Q8_0 rule (`scale = absmax / 127`)."""
    scheme = Scheme(8, block_size, symmetric)
    body, owned, counts = quantized_region(model, NAME, scheme, accuracy_level, include_lm_head=include_lm_head, pack=pack, fusions=fusions)
    return VariantSpec.ort_cpu(
        model,
        name=NAME,
        body=body,
        owned=owned,
        priority=20,
        description=f"{counts['linears']} linear layers as {counts['matmuls']} com.microsoft::MatMulNBits, "
        f"{scheme.describe()}, accuracy_level {accuracy_level}",
        tolerance="int8 weight-only: perplexity within +2% of the main graph's and top-1 agreement >= 95%, measured "
        "on SmolLM2-135M-Instruct (benchmarks/quality_bench.py, docs/variants.md)",
    )
