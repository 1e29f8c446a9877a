"""Rewrite rule: one `Attention` on the linear layers' 3-D outputs, with the KV cache concatenated
inside it, instead of the per-layer Reshape/Transpose/Concat around a 4-D `Attention`.

Attention-23 takes Q/K/V as [B, S, heads * D] with `q_num_heads`/`kv_num_heads` and `past_key`/
`past_value` as [B, kv_heads, P, D], and returns `present_key`/`present_value` =
Concat(past, K) in the cache layout; RotaryEmbedding-23 takes 3-D input with `num_heads`. So per
layer 3 Reshape + 4 Transpose + 2 Concat + 1 Reshape (and their copies) disappear: bit-identical
in onnxruntime, about 2 ms of each decoding step on the SmolLM-135M-shaped model. Runs after
`GroupedKvAttention` (it expects the cache fed to Attention directly). Layers whose q/k are
normalized per head between Reshape and Transpose (qwen3, gemma3) keep the 4-D form.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils

__all__ = ["Attention3D", "attention_3d_rules", "fuse_attention_3d"]

_BHSD = [0, 2, 1, 3]


def _int(dim) -> int | None:
    return dim if isinstance(dim, int) else None


class Attention3D(pattern.RewriteRuleClassBase):
    def pattern(self, op, q_lin, k_lin, v_lin, q_shape, k_shape, v_shape, q_cos, q_sin, k_cos, k_sin, past_k, past_v, mask, out_shape, y_shape):
        q = op.Transpose(op.Reshape(q_lin, q_shape, _allow_other_attributes=True), perm=_BHSD, _outputs=["q"])
        k = op.Transpose(op.Reshape(k_lin, k_shape, _allow_other_attributes=True), perm=_BHSD, _outputs=["k"])
        v = op.Transpose(op.Reshape(v_lin, v_shape, _allow_other_attributes=True), perm=_BHSD, _outputs=["v"])
        q_rot = op.RotaryEmbedding(q, q_cos, q_sin, _allow_other_attributes=True, _outputs=["q_rot"])
        k_rot = op.RotaryEmbedding(k, k_cos, k_sin, _allow_other_attributes=True, _outputs=["k_rot"])
        present_k = op.Concat(past_k, k_rot, _allow_other_attributes=True, _outputs=["present_k"])
        present_v = op.Concat(past_v, v, _allow_other_attributes=True, _outputs=["present_v"])
        y = op.Attention(q_rot, present_k, present_v, mask, _allow_other_attributes=True, _outputs=["y"])
        # GLM views the output as its own shape first: a Reshape that changes nothing.
        y = pattern.OrValue([op.Reshape(y, y_shape, _allow_other_attributes=True, _outputs=["y_view"]), y])
        out = op.Reshape(op.Transpose(y, perm=_BHSD), out_shape, _allow_other_attributes=True)
        return out, present_k, present_v

    def check(self, context, q, k, v, q_rot, k_rot, y, present_k, present_v, y_view=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if y_view is not None and (y_view.shape is None or y.shape is None or list(y_view.shape) != list(y.shape)):
            return result.fail("the Reshape after Attention changes its shape", y_view)
        for concat in (present_k.producer(), present_v.producer()):
            if concat.attributes.get_int("axis", 0) not in (2, -2):
                return result.fail("the cache is not concatenated on the sequence axis")
        for value in (q, k, v):
            if value.shape is None or len(value.shape) != 4 or _int(value.shape[1]) is None or _int(value.shape[3]) is None:
                return result.fail("Q/K/V need static heads and head size")
        if _int(k.shape[1]) != _int(v.shape[1]) or _int(q.shape[3]) != _int(k.shape[3]):
            return result.fail("K and V heads differ")
        for rotary in (q_rot.producer(), k_rot.producer()):
            if len(rotary.inputs) > 3:
                return result.fail("RotaryEmbedding with position_ids")
        if len(y.producer().outputs) != 1 or len(y.producer().inputs) != 4:
            return result.fail("Attention already has cache inputs or outputs")
        return result

    def rewrite(self, op, q_lin, k_lin, v_lin, q_cos, q_sin, k_cos, k_sin, past_k, past_v, mask, q, k, q_rot, k_rot, y, **_):
        def rotary(x, cos, sin, source: ir.Node, heads: int):
            attrs = {name: attr.value for name, attr in source.attributes.items() if name != "num_heads"}
            return op.RotaryEmbedding(x, cos, sin, num_heads=heads, **attrs)

        q3 = rotary(q_lin, q_cos, q_sin, q_rot.producer(), q.shape[1])
        k3 = rotary(k_lin, k_cos, k_sin, k_rot.producer(), k.shape[1])
        attrs = {name: attr.value for name, attr in y.producer().attributes.items()}
        out, present_k, present_v = op.Attention(
            q3, k3, v_lin, mask, past_k, past_v, q_num_heads=q.shape[1], kv_num_heads=k.shape[1], _outputs=3, **attrs
        )
        return out, present_k, present_v


attention_3d_rules = pattern.RewriteRuleSet([Attention3D.rule()])

fuse_attention_3d = fusion_utils.apply_fusion_rules(attention_3d_rules)
