"""Rewrite rule: BLOOM's eager ALiBi attention -> `Attention` with the bias in its float mask.

BLOOM has no SDPA path; it scores on [batch * heads] 3-D tensors with `baddbmm`, adding the ALiBi
bias (a per-head linear function of the key position, [batch * heads, 1, total]) to the scaled
scores before the causal mask:

    scores = Reshape(alibi + scale * (Reshape(Q) @ Transpose(Reshape(K))), [B, H, S, T])
    out    = Reshape(Softmax(scores + mask) @ Reshape(V), [B, H, S, D])

Attention-23 adds a float `attn_mask` to the scaled scores before the softmax, so
`Attention(Q, K, V, Reshape(alibi, [B, H, 1, T]) + mask, scale)` is the same computation on the
4-D tensors: the three head-merging reshapes, the transposed key copy and the decomposed softmax
go. No standard op computes the ALiBi bias itself; it stays a small [B, H, 1, T] subgraph of the
attention mask, shared by all layers.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils, ir_utils

__all__ = ["AlibiAttention", "alibi_attention_rules", "fuse_alibi_attention"]


class AlibiAttention(pattern.RewriteRuleClassBase):
    def pattern(self, op, q, k, v, alibi, mask, scale, q_shape, k_shape, v_shape, scores_shape, probs_shape, out_shape):
        q3 = op.Reshape(q, q_shape, _allow_other_attributes=True)
        k3 = op.Reshape(k, k_shape, _allow_other_attributes=True)
        v3 = op.Reshape(v, v_shape, _allow_other_attributes=True)
        scores = op.Add(op.Mul(op.MatMul(q3, op.Transpose(k3, perm=[0, 2, 1])), scale), alibi)
        scores = op.Reshape(scores, scores_shape, _allow_other_attributes=True)
        probs = op.Softmax(op.Add(scores, mask), axis=-1)
        out = op.MatMul(op.Reshape(probs, probs_shape, _allow_other_attributes=True), v3)
        return op.Reshape(out, out_shape, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, q, k, v, alibi, mask, scale, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not isinstance(ir_utils.get_singleton_value(scale), float):
            return result.fail("score scale is not a constant float", scale)
        for name, value in (("Q", q), ("K", k), ("V", v), ("output", y)):
            if value.shape is None or value.shape.rank() != 4 or not isinstance(value.shape[1], int):
                return result.fail(f"{name} is not [batch, heads, seq, head_dim] with static heads", value)
        if not (q.shape[1] == k.shape[1] == v.shape[1] == y.shape[1]):
            return result.fail("Q, K, V and the output do not have the same heads")
        if alibi.shape is None or alibi.shape.rank() != 3 or alibi.shape[1] != 1:
            return result.fail("bias is not [batch * heads, 1, total]", alibi)
        bindings: dict = {}
        fusion_utils.check_shape(bindings, q, ["B", "H", "S", "D"])
        fusion_utils.check_shape(bindings, k, ["B", "H", "T", "D"])
        fusion_utils.check_shape(bindings, v, ["B", "H", "T", "Dv"])
        fusion_utils.check_shape(bindings, y, ["B", "H", "S", "Dv"])
        return result

    def rewrite(self, op, q, k, v, alibi, mask, scale, **_):
        bias_shape = op.Concat(op.Shape(q, start=0, end=2), op.Constant(value_ints=[1, -1]), axis=0)
        bias = op.Add(op.Reshape(alibi, bias_shape), mask)
        return op.Attention(q, k, v, bias, scale=ir_utils.get_singleton_value(scale))


alibi_attention_rules = pattern.RewriteRuleSet([AlibiAttention.rule()])

fuse_alibi_attention = fusion_utils.apply_fusion_rules(alibi_attention_rules)
