"""`ort-cpu-int4`: the linear layers as onnxruntime's `MatMulNBits` with block-wise int4 weights,
except the most error-sensitive ones, kept in block-wise int8: the attention's packed Q/K/V
projection (V is the sensitive one; a packed matmul has one width) and the MLP down projections.
Linears that read the same input are packed into one `MatMulNBits` (Q/K/V, gate/up). The tied
lm_head is int4 by default (`lm_head_bits=8`: better quality, slower).

The int4 blocks (32 input channels of one output column) are asymmetric, and each block's scale
and zero point are searched to minimize the squared error weighted by the mean square of the
layer's input per channel, measured by running the fp32 main graph on the bundled calibration
texts (`attach_builtin_variants` does it; `calibration=False` skips it). `accuracy_level=4` lets
onnxruntime's CPU kernel quantize activations to int8 per block and use integer dot products,
which is where the decode speed comes from. The `ort-cpu` rewrites come along (`fusions`).
Only the packed weights and their scales are new; all else is the main graph's.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from ._quantized import Scheme, describe_smoothing, quantized_region
from .spec import VariantSpec

__all__ = ["NAME", "DEFAULT_BUDGET", "produce", "int4_region"]

NAME = "ort-cpu-int4"
DEFAULT_BUDGET = 0.10  # relative perplexity change on held-out calibration text (`--quant-budget`)
logger = logging.getLogger(__name__)


def produce(
    model: ir.Model,
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = False,
    method: str = "search",
    lm_head_bits: int = 4,
    mlp_down_bits: int = 8,
    attn_v_bits: int = 8,
    include_lm_head: bool = True,
    fusions: bool = True,
    pack: bool = True,
    calibration: list | None = None,
    budget: float | None = DEFAULT_BUDGET,
    smooth: float | None = None,
    bounded_memory: bool | None = None,
) -> VariantSpec:
    """`budget` (default 0.10): the perplexity change allowed on held-out calibration text; which
    groups stay int8 is measured (`_precision`), the lm_head included, and `lm_head_bits`,
    `attn_v_bits`, `mlp_down_bits` are not used. `budget=None` (or no calibration): the fixed list
    those three options give. `method`: "search" (default: scales searched per block, weighted by the layer input's mean
    square with `calibration`), "rtn" (round to nearest) or "gptq" (needs `calibration`; measured
    worse than "search" with the bundled 2.3k calibration tokens). `lm_head_bits`, `attn_v_bits`
    and `mlp_down_bits` (4 or 8) set those layers' width; int8 blocks are symmetric (llama.cpp's
    Q8_0 rule). `calibration` is a list of token-id windows (`attach_builtin_variants` passes the
    bundled calibration texts tokenized with the folder's tokenizer). Each option's perplexity on
    the real SmolLM2-135M-Instruct: docs/variants.md (benchmarks/quality_bench.py). `pack`
    puts same-input linears (Q/K/V, gate/up) in one `MatMulNBits` (fewer, larger calls: 121
    instead of 211 on SmolLM2); a packed QKV takes `attn_v_bits` as a whole. `bounded_memory`
    (None: when the main graph's weights would take more than half of the available memory,
    `resources.whole_model_fits`): the calibration statistics are gathered running the graph chunk
    by chunk (`ChunkedSession`), and the precision search, which holds the whole fp32 model, is
    not run: the fixed list is used, with a warning."""
    body, owned, counts, described = int4_region(
        model, NAME, "nbits", block_size, accuracy_level, symmetric, method, lm_head_bits, mlp_down_bits, attn_v_bits,
        include_lm_head, fusions, pack, calibration, budget, bounded_memory, smooth,
    )
    return VariantSpec.ort_cpu(
        model,
        name=NAME,
        body=body,
        owned=owned,
        priority=30,
        report={**({"quantization": counts["precision"]} if "precision" in counts else {}),
                **({"smoothing": counts["smoothing"]} if "smoothing" in counts else {})},
        description=f"{counts['linears']} linear layers as {counts['matmuls']} com.microsoft::MatMulNBits, "
        f"{described}, accuracy_level {accuracy_level}",
        tolerance="int4 weight-only: perplexity within +10% of the main graph's, measured on SmolLM2-135M-Instruct "
        "(benchmarks/quality_bench.py, docs/variants.md)",
    )


def int4_region(
    model: ir.Model, name: str, form: str, block_size: int, accuracy_level: int, symmetric: bool, method: str,
    lm_head_bits: int, mlp_down_bits: int, attn_v_bits: int, include_lm_head: bool, fusions: bool, pack: bool,
    calibration: list | None, budget: float | None = None, bounded_memory: bool | None = None, smooth: float | None = None,
) -> tuple[ir.Graph, dict, dict, str]:
    """(body, owned, counts, what was quantized how) of the int4 scheme above in `form` ("nbits"
    or "qdq"); the standard-op `int4` variant shares it."""
    from ...errors import InvalidArgumentError

    if method not in ("rtn", "search", "gptq"):
        raise InvalidArgumentError(f"{name}: method must be rtn, search or gptq, got {method!r}.")
    if method == "gptq" and not calibration:
        logger.warning("%s: GPTQ needs calibration token windows; none given, so scales are searched per block instead.", name)
        method = "search"
    if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget < 10):
        raise InvalidArgumentError(f"{name}: the quality budget must be a relative perplexity change in (0, 10), e.g. 0.10; got {budget!r}.")
    if budget is not None and not calibration and not bounded_memory:
        logger.warning("%s: no calibration text, so precision cannot be measured against the budget; the fixed list "
                       "(Q/K/V and MLP down projections int8) is used.", name)
    scheme = Scheme(4, block_size, symmetric, method)
    wide = {8: Scheme(8, block_size, symmetric=True), 4: None}
    if {lm_head_bits, mlp_down_bits, attn_v_bits} - set(wide):
        raise InvalidArgumentError(f"{name}: lm_head_bits, mlp_down_bits and attn_v_bits must be 4 or 8.")
    body, owned, counts = quantized_region(
        model, name, scheme, accuracy_level, wide[lm_head_bits], wide[mlp_down_bits], wide[attn_v_bits],
        include_lm_head, pack, fusions, calibration, form=form, budget=budget, bounded_memory=bounded_memory, smooth=smooth,
    )
    precision = counts.get("precision")
    if precision is not None:
        groups = ", ".join(f"{role} " + "/".join(f"{n} int{b}" for b, n in ((4, c["int4"]), (8, c["int8"])) if n)
                           for role, c in precision["groups"].items())
        described = (f"{scheme.describe(True)}; int8 (symmetric) where measured sensitivity required: {groups}; "
                     f"{precision['bytes_read_per_token'] / 1e6:.1f} MB of weights read per token; held-out perplexity "
                     f"{100 * precision['perplexity_change']:+.2f}% (budget {100 * precision['budget']:+.1f}%"
                     f"{'' if precision['met'] else ', NOT met'})" + describe_smoothing(counts))
        return body, owned, counts, described
    extra = "".join(
        f"; {label} {wide[bits].describe()}" for label, bits, key in (
            ("lm_head", lm_head_bits, "lm_head"), ("MLP down projections", mlp_down_bits, "mlp_down"),
            ("attention V (packed QKV) projections", attn_v_bits, "attn_v"),
        )
        if wide[bits] is not None and counts[key]
    )
    return body, owned, counts, scheme.describe(bool(calibration)) + extra + describe_smoothing(counts)
