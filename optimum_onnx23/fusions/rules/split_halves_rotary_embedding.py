"""Rewrite rule: rotary embedding written on two halves -> `RotaryEmbedding`.

gpt-oss and DeepSeek-V3 (`rope_interleave`) rotate two halves `a`, `b` of each head with
half-width tables and concatenate the results, instead of llama's `x * cos + rotate_half(x) * sin`:

    y = cat((a * cos - b * sin, b * cos + a * sin), -1)        # cos, sin: [B, 1, S, D/2]

gpt-oss takes `a, b = chunk(x, 2, -1)` (the halves of x); DeepSeek takes `a, b = x[..., ::2],
x[..., 1::2]` (its pairs, so y comes out de-interleaved, which is what its cache holds).
RotaryEmbedding-23 (`interleaved=0`) on `cat((a, b), -1)` with the [B, S, D/2] tables computes
exactly y; for the halves of x that concatenation is x itself and no node is added.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils, ir_utils

__all__ = ["SplitHalvesRotaryEmbedding", "split_halves_rotary_embedding_rules", "fuse_split_halves_rotary_embedding"]


def _halves_of(a, b):
    """x when `a`, `b` are outputs 0 and 1 of a `Split` of x into two equal halves of its last axis."""
    node = a.producer()
    if node is None or node is not b.producer() or node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.outputs) != 2 or a.index() != 0 or b.index() != 1:
        return None
    x = node.inputs[0]
    if x.shape is None or node.attributes.get_int("axis", 0) not in (-1, x.shape.rank() - 1):
        return None
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # explicit sizes must be equal halves
        sizes = ir_utils.get_numpy_value(node.inputs[1])
        if sizes is None or len(sizes) != 2 or sizes[0] != sizes[1]:
            return None
    return x


class SplitHalvesRotaryEmbedding(pattern.RewriteRuleClassBase):
    def __init__(self):
        # The tables are shared by q, k and every layer: keep the matched nodes; unused ones are removed after.
        super().__init__("SplitHalvesRotaryEmbedding", remove_nodes=False)

    def pattern(self, op, a, b, cos, sin, cos_axes, sin_axes):
        cos_4d = op.Unsqueeze(cos, cos_axes)
        sin_4d = op.Unsqueeze(sin, sin_axes)
        first = op.Sub(op.Mul(a, cos_4d), op.Mul(b, sin_4d))
        second = op.Add(op.Mul(b, cos_4d), op.Mul(a, sin_4d))
        return op.Concat(first, second, axis=-1)

    def check(self, context, a, b, cos, sin, cos_axes, sin_axes, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        for axes in (cos_axes, sin_axes):
            if not ir_utils.is_singleton_value(axes, 1):
                return result.fail("the tables are not unsqueezed on the head axis (1)", axes)
        for half in (a, b):
            if half.shape is None or half.shape.rank() != 4 or not isinstance(half.shape[3], int):
                return result.fail("a half is not [batch, heads, seq, D/2] with a static D/2", half)
        bindings: dict = {}
        if not (
            fusion_utils.check_shape_bool(bindings, a, ["B", "H", "S", "D2"])
            and fusion_utils.check_shape_bool(bindings, b, ["B", "H", "S", "D2"])
        ):
            return result.fail("the two halves differ in shape", b)
        for table in (cos, sin):
            if table.shape is None or table.shape.rank() != 3 or table.shape[2] != a.shape[3]:
                return result.fail("a table is not [batch, seq, D/2]", table)
        return result

    def rewrite(self, op, a, b, cos, sin, **_):
        x = _halves_of(a, b)
        if x is None:
            x = op.Concat(a, b, axis=-1)
        return op.RotaryEmbedding(x, cos, sin, interleaved=0)


split_halves_rotary_embedding_rules = pattern.RewriteRuleSet([SplitHalvesRotaryEmbedding.rule()])

fuse_split_halves_rotary_embedding = fusion_utils.apply_fusion_rules(split_halves_rotary_embedding_rules)
