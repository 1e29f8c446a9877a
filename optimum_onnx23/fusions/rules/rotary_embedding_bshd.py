"""Rewrite rule: rotate-half rotary embedding on [B, S, H, D] queries -> `RotaryEmbedding`.

Gemma 4 normalizes q and k per head before transposing them to [B, H, S, D], so its rotary
embedding runs on the [B, S, H, D] layout with tables unsqueezed on axis 2:

    y = x * cos[:, :, None] + cat((-x[..., D/2:], x[..., :D/2]), -1) * sin[:, :, None]

onnxscript's RotaryEmbedding fusion expects [B, H, S, D] (tables unsqueezed on axis 1).
RotaryEmbedding-23 reads [B, S, H * D] with `num_heads` as the same thing, so x gets a Reshape on
each side (no copy) and the tables their first half: the tables must be known to be two copies of
one half (`cat((freqs, freqs), -1)` through cos/sin, casts, scaling), otherwise the rule does not
apply.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils
from ._tables import halves_repeated
from ._tables import ints as _ints

__all__ = ["RotaryEmbeddingBSHD", "rotary_embedding_bshd_rules", "fuse_rotary_embedding_bshd"]


class RotaryEmbeddingBSHD(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, cos, sin, start1, end1, axes1, start2, end2, axes2):
        first = op.Slice(x, start1, end1, axes1, _allow_other_inputs=True, _outputs=["first"])
        second = op.Slice(x, start2, end2, axes2, _allow_other_inputs=True, _outputs=["second"])
        rotated = op.Concat(op.Neg(second), first, axis=-1)
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

    def check(self, context, x, cos, sin, start1, end1, axes1, start2, end2, axes2, first, second, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or x.shape.rank() != 4 or not isinstance(x.shape[2], int) or not isinstance(x.shape[3], int):
            return result.fail("x is not [B, S, H, D] with static heads and head size", x)
        half = x.shape[3] // 2
        for axes in (axes1, axes2):
            if _ints(axes) not in ([3], [-1]):
                return result.fail("not split along the head channels", axes)
        for sliced in (first, second):
            steps = sliced.producer().inputs[4] if len(sliced.producer().inputs) > 4 else None
            if steps is not None and _ints(steps) != [1]:
                return result.fail("strided slice", sliced)
        if _ints(start1) != [0] or _ints(end1) != [half] or _ints(start2) != [half] or (_ints(end2) or [0])[0] < x.shape[3]:
            return result.fail("x is not split into its two halves")
        for table in (cos, sin):
            if table.shape is None or table.shape.rank() != 4 or table.shape[2] != 1 or table.shape[3] != x.shape[3]:
                return result.fail("cos/sin table is not [B, S, 1, head size]", table)
            if not halves_repeated(table):
                return result.fail("cos/sin table not known to be two copies of one half", table)
        return result

    def rewrite(self, op, x, cos, sin, **_):
        heads, size = x.shape[2], x.shape[3]
        ints = lambda *v: op.Constant(value_ints=list(v))  # noqa: E731
        tables = [op.Squeeze(op.Slice(t, ints(0), ints(size // 2), ints(-1)), ints(2)) for t in (cos, sin)]
        flat = op.Reshape(x, ints(0, 0, heads * size))
        rotated = op.RotaryEmbedding(flat, *tables, interleaved=0, num_heads=heads)
        return op.Reshape(rotated, ints(0, 0, heads, size))


rotary_embedding_bshd_rules = pattern.RewriteRuleSet([RotaryEmbeddingBSHD.rule()], commute=True)

fuse_rotary_embedding_bshd = fusion_utils.apply_fusion_rules(rotary_embedding_bshd_rules)
