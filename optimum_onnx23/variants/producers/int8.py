"""`int8`: the `ort-cpu-int8` weights in standard ONNX ops: every linear layer (the tied lm_head
included) as `DequantizeLinear` (blocked, `block_size` 16, 32 for the lm_head, symmetric `int8` codes with
`scale = absmax / 127`, no zero point) feeding `MatMul`, no contrib op, each activation first
smoothed (one `Mul` by the variant's own `1 / s`, `_smooth`).

Same codes, scales and smoothing as `ort-cpu-int8`, so the same quality. onnxruntime's CPU provider fuses
each pair into an 8-bit `MatMulNBits` at session creation (our sessions set
`session.qdq_matmulnbits_accuracy_level` to 4, `ort-cpu-int8`'s `accuracy_level`). The weights
are the variant's own; all else is the main graph's.
"""

from __future__ import annotations

import onnx_ir as ir

from ._quantized import Scheme, describe_smoothing, quantized_region
from ._smooth import DEFAULT_ALPHA
from .int4 import PROVIDERS, standard_opset
from .ort_cpu_int8 import lm_head_clause as _lm_head
from .spec import VariantSpec

__all__ = ["NAME", "produce"]

NAME = "int8"


def produce(
    model: ir.Model, block_size: int = 16, symmetric: bool = True, include_lm_head: bool = True, pack: bool = False,
    calibration: list | None = None, smooth: float | None = DEFAULT_ALPHA, reorder: bool = False, method: str = "rtn",
    lm_head_block_size: int | None = 32,
) -> VariantSpec:
    """The options of `ort_cpu_int8.produce` less the onnxruntime ones (`accuracy_level` is a
    session option here; the `ort-cpu` rewrites are contrib ops); the same defaults."""
    opset = standard_opset(model)
    scheme = Scheme(8, block_size, symmetric, method)
    lm_head_scheme = Scheme(8, lm_head_block_size, symmetric, method) if lm_head_block_size else None
    body, owned, counts = quantized_region(
        model, NAME, scheme, 4, lm_head_scheme=lm_head_scheme, include_lm_head=include_lm_head, pack=pack, calibration=calibration, smooth=smooth, reorder=reorder, fusions=False, form="qdq"
    )
    return VariantSpec(
        name=NAME,
        body=body,
        providers=list(PROVIDERS),
        opset_imports={"": opset},
        owned=owned,
        priority=25,
        report={"smoothing": counts["smoothing"]} if "smoothing" in counts else {},
        description=f"{counts['linears']} linear layers as {counts['matmuls']} DequantizeLinear + MatMul, {scheme.describe()}{_lm_head(lm_head_scheme)}{describe_smoothing(counts)}",
        tolerance="int8 weight-only: perplexity within +2% of the main graph's and top-1 agreement >= 95%, measured "
        "on SmolLM2-135M-Instruct (benchmarks/quality_bench.py, docs/variants.md)",
    )
