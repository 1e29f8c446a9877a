"""Rewrite rule: feed `Attention` the grouped KV heads directly instead of repeating them.

The exporter writes HF's `repeat_kv` as `Reshape(Expand(Unsqueeze(kv, axis 2)))` before a 4-D
`Attention`; Attention-23 already maps query head h to kv head h // (q_heads / kv_heads), which
is exactly `repeat_kv`, so the three ops (and their full-size copies of the cache every step)
can go. onnxscript's GQA rule only matches when the cache concatenation feeds the expansion
directly (gemma2's eager path); torch's SDPA lowering leaves this form, which this rule covers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils

__all__ = ["GroupedKvAttention", "grouped_kv_attention_rules", "fuse_grouped_kv_attention"]


def _const_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(x) for x in np.asarray(value.const_value.numpy()).reshape(-1)]


class GroupedKvAttention(pattern.RewriteRuleClassBase):
    def pattern(self, op, q, k, v, mask, k_axes, k_shape, k_view, v_axes, v_shape, v_view):
        k_rep = op.Reshape(op.Expand(op.Unsqueeze(k, k_axes), k_shape), k_view, _allow_other_attributes=True)
        v_rep = op.Reshape(op.Expand(op.Unsqueeze(v, v_axes), v_shape), v_view, _allow_other_attributes=True)
        return op.Attention(q, k_rep, v_rep, mask, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, q, k, v, k_axes, v_axes, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if _const_ints(k_axes) != [2] or _const_ints(v_axes) != [2]:
            return result.fail("KV not unsqueezed at axis 2 (not repeat_kv)")
        for value in (q, k, v):
            if value.shape is not None and len(value.shape) != 4:
                return result.fail("Attention inputs must be 4-D [B, heads, S, D]")
        attention = y.producer()
        if len(attention.outputs) != 1:
            return result.fail("Attention with cache outputs")
        return result

    def rewrite(self, op, q, k, v, mask, y, **_):
        attributes = {name: attr for name, attr in y.producer().attributes.items()}
        return op.Attention(q, k, v, mask, **{n: a.value for n, a in attributes.items()})


grouped_kv_attention_rules = pattern.RewriteRuleSet([GroupedKvAttention.rule()])

fuse_grouped_kv_attention = fusion_utils.apply_fusion_rules(grouped_kv_attention_rules)
