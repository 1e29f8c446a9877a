"""`ort-cpu-int8`: every linear layer (the tied lm_head included) as onnxruntime's `MatMulNBits`
with block-wise int8 weights.

Weight-only: each block of 16 input channels of an output column (32 for the lm_head) has its
own scale, and `accuracy_level=4` quantizes the activation per block of the same size, so one
outlier channel costs one block its precision, not the whole row; activation smoothing
(SmoothQuant, `_smooth`, from calibration text) moves most of the outliers' range into the
weights first, one `Mul` per matmul by the variant's own `1 / s`. The variant this replaced (`DynamicQuantizeMatMul`:
per-column 7-bit weights, activation quantized per tensor to uint8) measured +70% perplexity on
the real SmolLM2-135M-Instruct; the per-tensor activation scale is what lost it (see
docs/variants.md). The int8 weights and scales are the variant's own; all else is the main graph's.
"""

from __future__ import annotations

import onnx_ir as ir

from ._quantized import Scheme, describe_smoothing, quantized_region
from ._smooth import DEFAULT_ALPHA
from .spec import VariantSpec

__all__ = ["NAME", "produce", "lm_head_clause"]

NAME = "ort-cpu-int8"


def produce(
    model: ir.Model,
    block_size: int = 16,
    accuracy_level: int = 4,
    symmetric: bool = True,
    include_lm_head: bool = True,
    fusions: bool = True,
    pack: bool = False,
    calibration: list | None = None,
    smooth: float | None = DEFAULT_ALPHA,
    reorder: bool = False,
    method: str = "rtn",
    lm_head_block_size: int | None = 32,
) -> VariantSpec:
    """Symmetric int8 blocks use llama.cpp's Q8_0 rule (`scale = absmax / 127`).

    `smooth` (alpha, default 0.5; None: off) and `calibration` (token windows;
    `attach_builtin_variants` passes the bundled calibration texts): activation smoothing
    (`_smooth`), which the int8 activations of `accuracy_level` 4 need on checkpoints with outlier
    channels. `block_size` 16 for the decoder layers (the activation is quantized in blocks of
    the same size), `lm_head_block_size` 32 for the lm_head (most of the bytes on a large
    vocabulary: its blocks of 16 cost decode speed and gained nothing measurable). Measured on
    Gemma-3-270M's evaluation split, top-1 agreement with PyTorch: 93.0% unsmoothed in blocks of
    32, 95.2% smoothed, 96.1% smoothed with the layers in blocks of 16 (docs/variants.md).
    `reorder` sorts each activation's channels by range first (measured worse: 93.8%); `method`
    "search" / "gptq" as for int4 (measured: no gain / +0.5 point of top-1 for 3x the attach
    time and 5 GB of memory)."""
    scheme = Scheme(8, block_size, symmetric, method)
    lm_head_scheme = Scheme(8, lm_head_block_size, symmetric, method) if lm_head_block_size else None
    body, owned, counts = quantized_region(model, NAME, scheme, accuracy_level, lm_head_scheme=lm_head_scheme, include_lm_head=include_lm_head, pack=pack, calibration=calibration, smooth=smooth, reorder=reorder, fusions=fusions)
    return VariantSpec.ort_cpu(
        model,
        name=NAME,
        body=body,
        owned=owned,
        priority=20,
        report={"smoothing": counts["smoothing"]} if "smoothing" in counts else {},
        description=f"{counts['linears']} linear layers as {counts['matmuls']} com.microsoft::MatMulNBits, "
        f"{scheme.describe()}{_lm_head(lm_head_scheme)}{describe_smoothing(counts)}, accuracy_level {accuracy_level}",
        tolerance="int8 weight-only: perplexity within +2% of the main graph's and top-1 agreement >= 95%, measured "
        "on SmolLM2-135M-Instruct (benchmarks/quality_bench.py, docs/variants.md)",
    )


def lm_head_clause(scheme: Scheme | None) -> str:
    return "" if scheme is None else f" (lm_head in blocks of {scheme.block_size})"


_lm_head = lm_head_clause
