"""Fuse eager softcapped attention (gemma2) into the standard `Attention` op with `softcap`.

transformers runs gemma2's attention in eager mode because SDPA has no logit softcap, so the
exporter sees the decomposed form and torch's SDPA->Attention lowering never applies:

    Softmax(Add(Mul(Tanh(Div(Mul(MatMul(Q, Transpose(K)), scale), cap)), cap), mask)) @ V

ONNX Attention-23 applies `softcap` after scaling and *before* the mask (so masked scores stay
-inf), which is the same order as transformers' code. K and V here are the head-expanded
(repeat_kv) tensors; the grouped_kv_attention rule, run afterwards, drops that expansion.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils, ir_utils

__all__ = ["SoftcapAttentionFusion", "softcap_attention_rules", "fuse_softcap_attention"]


class SoftcapAttentionFusion(pattern.RewriteRuleClassBase):
    def __init__(self):
        super().__init__("SoftcapAttention")

    def pattern(self, op, query, key, value, mask, scale, cap_in, cap_out):
        scores = op.MatMul(query, op.Transpose(key, perm=[0, 1, 3, 2]))
        scores = op.Mul(scores, scale)
        capped = op.Mul(op.Tanh(op.Div(scores, cap_in)), cap_out)
        probs = op.Softmax(op.Add(capped, mask), axis=-1)
        return op.MatMul(probs, value)

    def check(self, context, query, key, value, mask, scale, cap_in, cap_out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        scale_value = ir_utils.get_singleton_value(scale)
        cap_value = ir_utils.get_singleton_value(cap_in)
        if not isinstance(scale_value, float):
            return result.fail("Score scale is not a constant float scalar.", scale)
        if not isinstance(cap_value, float) or cap_value <= 0:
            return result.fail("Softcap divisor is not a positive constant float scalar.", cap_in)
        out_value = ir_utils.get_singleton_value(cap_out)
        if not isinstance(out_value, float) or not math.isclose(out_value, cap_value, rel_tol=1e-6):
            return result.fail("Softcap multiplier differs from its divisor.", cap_out)
        for name, val in (("query", query), ("key", key), ("value", value)):
            if val.shape is None or val.shape.rank() != 4:
                return result.fail(f"{name} is not a 4-D [batch, heads, seq, head_dim] tensor.", val)
        bindings: dict = {}
        fusion_utils.check_shape(bindings, query, ["B", "H", "S", "D"])
        fusion_utils.check_shape(bindings, key, ["B", "H", "T", "D"])
        fusion_utils.check_shape(bindings, value, ["B", "H", "T", "Dv"])
        return result

    def rewrite(self, op, query, key, value, mask, scale, cap_in, **_):
        return op.Attention(
            query,
            key,
            value,
            mask,
            scale=ir_utils.get_singleton_value(scale),
            softcap=ir_utils.get_singleton_value(cap_in),
        )


softcap_attention_rules = pattern.RewriteRuleSet([SoftcapAttentionFusion.rule()])

fuse_softcap_attention = fusion_utils.apply_fusion_rules(softcap_attention_rules)
