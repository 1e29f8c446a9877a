"""`ort-cpu`: fp32 regions rewritten to onnxruntime contrib ops, weights untouched.

Each residual `Add` feeding an opset-23 `RMSNormalization` becomes one
`com.microsoft::SkipSimplifiedLayerNormalization` (the sum and the norm in one pass over the
hidden state). The body only rewires: it owns no weights. Whether it pays is measured by
benchmarks/variants_bench.py; fp32 decode of these models is bound by reading the weights, which
this variant does not change (see docs/variants.md for the figures).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ._diff import region_from_rewrite
from .spec import VariantSpec

__all__ = ["NAME", "produce", "SkipRmsNormalizationToOrt"]

NAME = "ort-cpu"


class SkipRmsNormalizationToOrt(pattern.RewriteRuleClassBase):
    """`RMSNormalization(Add(a, b), gamma)` (axis -1, fp32 stash) -> `SkipSimplifiedLayerNormalization`;
    the sum stays available as its 4th output for the next residual connection."""

    def pattern(self, op, a, b, gamma):
        total = op.Add(a, b, _outputs=["total"])
        normalized = op.RMSNormalization(total, gamma, _allow_other_attributes=True, _outputs=["normalized"])
        return normalized, total

    def check(self, context, a, b, gamma, normalized, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        node = normalized.producer()
        if node.attributes.get_int("axis", -1) != -1 or node.attributes.get_int("stash_type", 1) != 1:
            return result.fail("RMSNormalization must normalize the last axis with fp32 stash")
        if gamma.shape is None or len(gamma.shape) != 1:
            return result.fail("gamma must be 1-D")
        return result

    def rewrite(self, op, a, b, gamma, normalized, **_):
        epsilon = normalized.producer().attributes.get_float("epsilon", 1e-5)
        y, _mean, _inv_std, total = op.SkipSimplifiedLayerNormalization(
            a, b, gamma, epsilon=epsilon, _domain="com.microsoft", _outputs=4
        )
        return y, total


def produce(model: ir.Model) -> VariantSpec:
    from ...errors import VariantFormatError

    rewritten = model.clone()
    count = pattern.RewriteRuleSet([SkipRmsNormalizationToOrt.rule()]).apply_to_model(rewritten)
    body = region_from_rewrite(model, rewritten, NAME) if count else None
    if body is None:
        raise VariantFormatError("ort-cpu: no Add + RMSNormalization pair to fuse in this graph; nothing to attach.")
    return VariantSpec(
        name=NAME,
        body=body,
        providers=["CPUExecutionProvider"],
        opset_imports={"": model.opset_imports.get("", 23), "com.microsoft": 1},
        priority=10,
        description=f"{count} Add + RMSNormalization pairs as com.microsoft::SkipSimplifiedLayerNormalization",
        tolerance="fp32: within 1e-4 of the main graph",
    )
