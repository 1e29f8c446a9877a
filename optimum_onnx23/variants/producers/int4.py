"""`int4`: the `ort-cpu-int4` weights in standard ONNX ops: each linear layer (group) as
`DequantizeLinear` (blocked, `block_size` 32: `uint4` codes with `uint4` zero points; the int8
layers as symmetric `int8` codes, no zero point) feeding `MatMul`, no contrib op.

Same codes, scales and zero points as `ort-cpu-int4` (one quantization, `_quantized`), same
packing (Q/K/V, gate/up in one matmul and a `Split`), so the same quality. onnxruntime's CPU
provider fuses each `DequantizeLinear` + `MatMul` into `MatMulNBits` at session creation (our
sessions set `session.qdq_matmulnbits_accuracy_level` to 4, `ort-cpu-int4`'s `accuracy_level`),
which makes it as fast as the contrib form there; runtimes without that fusion still run it
(`DequantizeLinear` is opset 21+), and OpenVINO keeps such weights compressed. The ONNX graph is
the main graph's opset; the weights are the variant's own, all else is the main graph's.
"""

from __future__ import annotations

import onnx_ir as ir

from .ort_cpu_int4 import DEFAULT_BUDGET, int4_region
from .spec import VariantSpec

__all__ = ["NAME", "PROVIDERS", "produce", "standard_opset"]

NAME = "int4"
PROVIDERS = ["CPUExecutionProvider"]  # the providers measured to fuse it (docs/variants.md)


def produce(
    model: ir.Model,
    block_size: int = 32,
    symmetric: bool = False,
    method: str = "search",
    lm_head_bits: int = 4,
    mlp_down_bits: int = 8,
    attn_v_bits: int = 8,
    include_lm_head: bool = True,
    pack: bool = True,
    calibration: list | None = None,
    budget: float | None = DEFAULT_BUDGET,
    smooth: float | None = None,
    bounded_memory: bool | None = None,
) -> VariantSpec:
    """The options of `ort_cpu_int4.produce` (same defaults, same meaning) less the onnxruntime
    ones: `accuracy_level` is a session option here, and the `ort-cpu` rewrites are contrib ops."""
    body, owned, counts, described = int4_region(
        model, NAME, "qdq", block_size, 4, symmetric, method, lm_head_bits, mlp_down_bits, attn_v_bits,
        include_lm_head, False, pack, calibration, budget, bounded_memory, smooth,
    )
    return VariantSpec(
        name=NAME,
        body=body,
        providers=list(PROVIDERS),
        opset_imports={"": standard_opset(model)},
        owned=owned,
        priority=35,
        report={**({"quantization": counts["precision"]} if "precision" in counts else {}),
                **({"smoothing": counts["smoothing"]} if "smoothing" in counts else {})},
        description=f"{counts['linears']} linear layers as {counts['matmuls']} DequantizeLinear + MatMul, {described}",
        tolerance="int4 weight-only: perplexity within +10% of the main graph's, measured on SmolLM2-135M-Instruct "
        "(benchmarks/quality_bench.py, docs/variants.md)",
    )


def standard_opset(model: ir.Model) -> int:
    from ...errors import VariantNotApplicableError

    opset = model.opset_imports.get("", 23)
    if opset < 21:
        raise VariantNotApplicableError(f"{NAME}: blocked DequantizeLinear needs opset 21 or newer; this graph is opset {opset}.")
    return opset
