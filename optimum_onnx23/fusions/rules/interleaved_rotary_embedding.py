"""Rewrite rule: interleaved rotary embedding -> `RotaryEmbedding(interleaved=1)`.

GPT-J, CodeGen, GLM, Cohere, Helium, ERNIE 4.5 (and DeepSeek's `rope_interleave`) rotate the
channel pairs (x0, x1), (x2, x3), ... instead of the two halves:

    rot(x) = flatten(stack((-x[..., 1::2], x[..., ::2]), -1))        # rotate_every_two
    y      = x * cos + rot(x) * sin                                  # cos/sin repeat each frequency twice

onnxscript's RotaryEmbedding fusion knows only the halves form. RotaryEmbedding-23 with
`interleaved=1` computes exactly this from half-width tables: cos[..., ::2], the frequencies
before they were repeated. The tables must be known to repeat each frequency twice (they come from
`repeat_interleave`, possibly through cos/sin, casts, scaling or unsqueezes), otherwise the rule
does not apply. Both query layouts occur: [B, H, S, D] (tables [B, 1, S, D]) and GPT-J's
[B, S, H, D] (tables [B, S, 1, D]), which RotaryEmbedding takes as 3-D [B, S, H * D] with
`num_heads` (a Reshape each side, no copy).
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils
from ._tables import ints as _ints
from ._tables import pairs_repeated, repeat_interleave_source

__all__ = ["InterleavedRotaryEmbedding", "interleaved_rotary_embedding_rules", "fuse_interleaved_rotary_embedding"]

_INT64_MAX = np.iinfo(np.int64).max


def _half_table(op, table, head_axis: int):
    """[B, S, D/2]: the table before its frequencies were repeated, without its head axis."""
    producer = table.producer()
    source = repeat_interleave_source(producer)
    if source is None:
        ints = lambda *v: op.Constant(value_ints=list(v))  # noqa: E731
        source = op.Slice(table, ints(0), ints(_INT64_MAX), ints(-1), ints(2))
    return op.Squeeze(source, op.Constant(value_ints=[head_axis]))


class InterleavedRotaryEmbedding(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, cos, sin, start_even, end_even, axes_even, step_even, start_odd, end_odd, axes_odd, step_odd, axis_a, axis_b, shape):
        x_even = op.Slice(x, start_even, end_even, axes_even, step_even)
        x_odd = op.Slice(x, start_odd, end_odd, axes_odd, step_odd)
        pairs = op.Concat(op.Unsqueeze(op.Neg(x_odd), axis_a), op.Unsqueeze(x_even, axis_b), axis=-1)
        rotated = op.Reshape(pairs, shape, _allow_other_attributes=True)
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

    def check(self, context, x, cos, sin, start_even, end_even, axes_even, step_even, start_odd, end_odd, axes_odd, step_odd, axis_a, axis_b, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or x.shape.rank() != 4 or not isinstance(x.shape[3], int) or x.shape[3] % 2:
            return result.fail("x is not 4-D with a static, even head size", x)
        for axes in (axes_even, axes_odd):
            if _ints(axes) not in ([3], [-1]):
                return result.fail("the pairs are not split along the last axis", axes)
        if _ints(start_even) != [0] or _ints(start_odd) != [1] or _ints(step_even) != [2] or _ints(step_odd) != [2]:
            return result.fail("not x[..., ::2] and x[..., 1::2]")
        if any(_ints(end) is None or _ints(end)[0] < x.shape[3] for end in (end_even, end_odd)):
            return result.fail("the slices stop before the last channel")
        for axis in (axis_a, axis_b):
            if _ints(axis) not in ([4], [-1]):
                return result.fail("pairs not stacked on a new last axis", axis)
        head_axes = set()
        for table in (cos, sin):
            if table.shape is None or table.shape.rank() != 4 or table.shape[3] != x.shape[3]:
                return result.fail("cos/sin table is not [.., .., .., head size]", table)
            ones = [axis for axis in (1, 2) if table.shape[axis] == 1]
            if len(ones) != 1:
                return result.fail("cos/sin table does not broadcast over one heads axis", table)
            head_axes.add(ones[0])
            if not pairs_repeated(table):
                return result.fail("cos/sin table not known to repeat each frequency twice", table)
        if len(head_axes) != 1 or not isinstance(x.shape[next(iter(head_axes))], int):
            return result.fail("cos and sin broadcast differently, or the head count is not static")
        return result

    def rewrite(self, op, x, cos, sin, **_):
        head_axis = 1 if cos.shape[1] == 1 else 2
        cos_half, sin_half = _half_table(op, cos, head_axis), _half_table(op, sin, head_axis)
        if head_axis == 1:  # [B, H, S, D]
            return op.RotaryEmbedding(x, cos_half, sin_half, interleaved=1)
        heads, size = x.shape[2], x.shape[3]  # [B, S, H, D]: RotaryEmbedding's 3-D form
        flat = op.Reshape(x, op.Constant(value_ints=[0, 0, heads * size]))
        rotated = op.RotaryEmbedding(flat, cos_half, sin_half, interleaved=1, num_heads=heads)
        return op.Reshape(rotated, op.Constant(value_ints=[0, 0, heads, size]))


interleaved_rotary_embedding_rules = pattern.RewriteRuleSet([InterleavedRotaryEmbedding.rule()], commute=True)

fuse_interleaved_rotary_embedding = fusion_utils.apply_fusion_rules(interleaved_rotary_embedding_rules)
