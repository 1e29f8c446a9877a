"""Rewrite rule: rotate-half rotary embedding whose cos/sin tables are cast -> `RotaryEmbedding`.

fp16 and bf16 exports compute the tables in fp32 (transformers' rotary embedding autocasts them)
and cast them to the model's dtype after Cos/Sin:

    cos = Cast(Cos(Concat(freqs, freqs)), to=T)[:, None]    sin likewise

onnxscript's RotaryEmbedding fusion expects Unsqueeze(Cos(Concat(...))) directly, so it misses every
layer of such exports. The rewrite keeps the cast: RotaryEmbedding(x, Cast(Cos(freqs)), Cast(Sin(freqs))),
the tables computed in fp32 as the model does and rounded once, as before.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ..._onnxscript_compat import RotaryEmbedding23Fusion, fusion_utils, rotate_half_pattern

__all__ = ["RotaryEmbeddingCast", "rotary_embedding_cast_rules", "fuse_rotary_embedding_cast"]


class RotaryEmbeddingCast(RotaryEmbedding23Fusion):
    """onnxscript's pattern and check (4-D x, static heads and head size, split into halves,
    tables unsqueezed on axis 1), with a Cast between Cos/Sin and the Unsqueeze."""

    def __init__(self):
        pattern.RewriteRuleClassBase.__init__(self, name="RotaryEmbeddingCast", remove_nodes=False)

    def pattern(self, op, x, freqs, start1, end1, start2, end2, one1, one2):
        freqs_repeated = op.Concat(freqs, freqs, axis=-1)
        cos = op.Cast(op.Cos(freqs_repeated), _outputs=["cos_cast"])
        sin = op.Cast(op.Sin(freqs_repeated), _outputs=["sin_cast"])
        cos_4d = op.Unsqueeze(cos, one1)
        sin_4d = op.Unsqueeze(sin, one2)
        return x * cos_4d + rotate_half_pattern(op, x, start1, end1, start2, end2) * sin_4d

    def check(self, context, x, cos_cast, sin_cast, **kwargs) -> pattern.MatchResult:
        result = super().check(context, x=x, **kwargs)
        if not result:
            return result
        to = [value.producer().attributes.get_int("to") for value in (cos_cast, sin_cast)]
        if to[0] != to[1] or x.dtype is None or to[0] != x.dtype.value:
            return result.fail("cos/sin are not cast to the dtype of x", x)
        return result

    def rewrite(self, op, x, freqs, cos_cast, **_):
        to = cos_cast.producer().attributes.get_int("to")
        return op.RotaryEmbedding(
            x, op.Cast(op.Cos(freqs), to=to), op.Cast(op.Sin(freqs), to=to), interleaved=0, num_heads=x.shape[1]
        )


rotary_embedding_cast_rules = pattern.RewriteRuleSet([RotaryEmbeddingCast.rule()])

fuse_rotary_embedding_cast = fusion_utils.apply_fusion_rules(rotary_embedding_cast_rules)
