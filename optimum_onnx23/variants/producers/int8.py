"""`int8`: the `ort-cpu-int8` weights in standard ONNX ops: every linear layer (the tied lm_head
included) as `DequantizeLinear` (blocked, `block_size` 32, symmetric `int8` codes with
`scale = absmax / 127`, no zero point) feeding `MatMul`, no contrib op.

Same codes and scales as `ort-cpu-int8`, so the same quality. onnxruntime's CPU provider fuses
each pair into an 8-bit `MatMulNBits` at session creation (our sessions set
`session.qdq_matmulnbits_accuracy_level` to 4, `ort-cpu-int8`'s `accuracy_level`). The weights
are the variant's own; all else is the main graph's.
"""

from __future__ import annotations

import onnx_ir as ir

from ._quantized import Scheme, quantized_region
from .int4 import PROVIDERS, standard_opset
from .spec import VariantSpec

__all__ = ["NAME", "produce"]

NAME = "int8"


def produce(
    model: ir.Model, block_size: int = 32, symmetric: bool = True, include_lm_head: bool = True, pack: bool = False
) -> VariantSpec:
    """The options of `ort_cpu_int8.produce` less the onnxruntime ones (`accuracy_level` is a
    session option here; the `ort-cpu` rewrites are contrib ops)."""
    opset = standard_opset(model)
    scheme = Scheme(8, block_size, symmetric)
    body, owned, counts = quantized_region(
        model, NAME, scheme, 4, include_lm_head=include_lm_head, pack=pack, fusions=False, form="qdq"
    )
    return VariantSpec(
        name=NAME,
        body=body,
        providers=list(PROVIDERS),
        opset_imports={"": opset},
        owned=owned,
        priority=25,
        description=f"{counts['linears']} linear layers as {counts['matmuls']} DequantizeLinear + MatMul, {scheme.describe()}",
        tolerance="int8 weight-only: perplexity within +2% of the main graph's and top-1 agreement >= 95%, measured "
        "on SmolLM2-135M-Instruct (benchmarks/quality_bench.py, docs/variants.md)",
    )
