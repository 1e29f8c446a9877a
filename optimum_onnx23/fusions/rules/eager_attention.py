"""Rewrite rule: eager (decomposed) scaled dot-product attention -> `Attention`.

Models traced with transformers' eager attention (Falcon, whose SDPA call broadcasts one kv head
and does not export) leave the textbook form

    Softmax(Q @ Transpose(K) / sqrt(d) + mask) @ V          (or * scale)

on 4-D [B, heads, S, D] tensors, where K and V may have fewer heads than Q (multi-query: one head,
broadcast by MatMul). Attention-23 takes exactly that: scale, additive float mask, and kv heads
dividing the query heads (query head h reads kv head h // (q_heads / kv_heads), which for one kv
head is the broadcast). The softcap rule covers the softcapped variant.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils, ir_utils

__all__ = ["EagerAttention", "eager_attention_rules", "fuse_eager_attention"]


class EagerAttention(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, divide: bool):
        super().__init__(name)
        self._divide = divide

    def pattern(self, op, q, k, v, mask, scale):
        scores = op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2]))
        scores = op.Div(scores, scale) if self._divide else op.Mul(scores, scale)
        return op.MatMul(op.Softmax(op.Add(scores, mask), axis=-1), v)

    def check(self, context, q, k, v, mask, scale, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        value = ir_utils.get_singleton_value(scale)
        if not isinstance(value, float) or value == 0:
            return result.fail("score scale is not a non-zero constant float", scale)
        for name, x in (("Q", q), ("K", k), ("V", v)):
            if x.shape is None or x.shape.rank() != 4 or not isinstance(x.shape[1], int):
                return result.fail(f"{name} is not [batch, heads, seq, head_dim] with static heads", x)
        if k.shape[1] != v.shape[1] or q.shape[1] % k.shape[1]:
            return result.fail("kv heads differ between K and V or do not divide the query heads")
        bindings: dict = {}
        fusion_utils.check_shape(bindings, q, ["B", "Hq", "S", "D"])
        fusion_utils.check_shape(bindings, k, ["Bk", "Hkv", "T", "D"])
        fusion_utils.check_shape(bindings, v, ["Bk", "Hkv", "T", "Dv"])
        return result

    def rewrite(self, op, q, k, v, mask, scale, **_):
        value = ir_utils.get_singleton_value(scale)
        return op.Attention(q, k, v, mask, scale=1.0 / value if self._divide else value)


eager_attention_rules = pattern.RewriteRuleSet([EagerAttention.rule("EagerAttentionDiv", True), EagerAttention.rule("EagerAttentionMul", False)])

fuse_eager_attention = fusion_utils.apply_fusion_rules(eager_attention_rules)
