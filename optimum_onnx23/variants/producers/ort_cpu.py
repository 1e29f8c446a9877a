"""`ort-cpu`: fp32 regions rewritten for onnxruntime's CPU kernels, weights untouched.

- Each residual `Add` feeding an opset-23 `RMSNormalization` becomes one
  `com.microsoft::SkipSimplifiedLayerNormalization` (sum and norm in one pass).
- `Attention` reads the grouped KV heads directly instead of `repeat_kv`'s
  Unsqueeze/Expand/Reshape copies (`fusions.rules.grouped_kv_attention`, which the export's fusion
  stage now applies to the main graph too; kept here for files exported before it did).
- That `Attention` then takes the linear layers' 3-D outputs and the past cache directly and
  returns the present cache itself (`fusions.rules.attention_3d`, also applied to the main graph
  by the export now; kept here for files exported before it was).

The body only rewires: it owns no weights. The int4 and int8 variants carry the same rewrites
(`ort_cpu_region`). Measured by benchmarks/variants_bench.py; see docs/variants.md.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ...fusions.rules.attention_3d import Attention3D
from ...fusions.rules.grouped_kv_attention import GroupedKvAttention
from ._diff import region_from_rewrite
from .spec import VariantSpec

__all__ = ["NAME", "produce", "ort_cpu_region", "SkipRmsNormalizationToOrt"]

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


def ort_cpu_region(model: ir.Model, tag: str = NAME) -> tuple[ir.Graph | None, dict[str, int]]:
    """The rewritten region (None if nothing matched) and how many times each rule applied."""
    rewritten = model.clone()
    counts = {}
    for rule in (SkipRmsNormalizationToOrt, GroupedKvAttention, Attention3D):  # Attention3D needs GroupedKvAttention's output
        counts[rule.__name__] = pattern.RewriteRuleSet([rule.rule()]).apply_to_model(rewritten)
    body = region_from_rewrite(model, rewritten, tag) if any(counts.values()) else None
    return body, counts


def produce(model: ir.Model) -> VariantSpec:
    from ...errors import VariantNotApplicableError

    body, counts = ort_cpu_region(model)
    if body is None:
        raise VariantNotApplicableError("ort-cpu: nothing to rewrite in this graph (no Add + RMSNormalization, no repeated KV).")
    return VariantSpec.ort_cpu(
        model,
        name=NAME,
        body=body,
        priority=10,
        description=f"{counts['SkipRmsNormalizationToOrt']} Add + RMSNormalization as com.microsoft::SkipSimplifiedLayerNormalization, "
        f"{counts['GroupedKvAttention']} Attention on grouped KV heads, {counts['Attention3D']} of them 3-D with the cache inside",
        tolerance="fp32: within 1e-4 of the main graph",
    )
