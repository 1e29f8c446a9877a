"""Rewrite rule: partial rotary embedding -> one `RotaryEmbedding(rotary_embedding_dim=r)`.

Phi, GPT-NeoX, StableLM, Nemotron, GLM, GPT-J and CodeGen rotate only the first r channels of each
head and pass the rest through:

    y = Concat(RotaryEmbedding(x[..., :r]), x[..., r:], axis=-1)

RotaryEmbedding-23 does this itself with `rotary_embedding_dim=r` (the tables stay [.., r/2]), so
the two Slices and the Concat go, and the 3-D Attention rule can then take the projections
directly. onnxscript's own partial rule covers only the non-interleaved [B, H, S, D] form; this one
also takes `interleaved=1` (GLM, GPT-J, CodeGen) and the 3-D form the interleaved rule writes for
GPT-J's [B, S, H, D] layout (a Reshape on each side of the RotaryEmbedding).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils
from ._tables import ints as _ints

__all__ = ["PartialRotaryEmbedding", "PartialRotaryEmbedding3D", "partial_rotary_embedding_rules", "fuse_partial_rotary_embedding"]


def _check_split(result, x, rot_start, rot_end, rot_axes, pass_start, pass_end, pass_axes, rope_node: ir.Node):
    if x.shape is None or x.shape.rank() != 4 or not isinstance(x.shape[3], int):
        return result.fail("x is not 4-D with a static head size", x)
    size = x.shape[3]
    for axes in (rot_axes, pass_axes):
        if _ints(axes) not in ([3], [-1]):
            return result.fail("not split along the head channels", axes)
    rotary = _ints(rot_end)
    if _ints(rot_start) != [0] or rotary is None or not 0 < rotary[0] < size:
        return result.fail("the rotated part is not x[..., :r] with 0 < r < head size")
    if _ints(pass_start) != rotary or _ints(pass_end) is None or _ints(pass_end)[0] < size:
        return result.fail("the passed-through part is not x[..., r:]")
    if rope_node.attributes.get_int("rotary_embedding_dim", 0):
        return result.fail("RotaryEmbedding already partial")
    if len(rope_node.inputs) > 3 and rope_node.inputs[3] is not None:
        return result.fail("RotaryEmbedding with position_ids")
    return result


def _steps_one(steps: ir.Value | None) -> bool:
    return steps is None or _ints(steps) == [1]


class PartialRotaryEmbedding(pattern.RewriteRuleClassBase):
    """[B, H, S, D] (or any 4-D layout RotaryEmbedding reads as such)."""

    def pattern(self, op, x, rot_start, rot_end, rot_axes, pass_start, pass_end, pass_axes):
        rotated = op.RotaryEmbedding(
            op.Slice(x, rot_start, rot_end, rot_axes, _allow_other_inputs=True, _outputs=["rot_in"]),
            _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["rot_out"],
        )
        passed = op.Slice(x, pass_start, pass_end, pass_axes, _allow_other_inputs=True, _outputs=["pass_in"])
        return op.Concat(rotated, passed, axis=-1)

    def check(self, context, x, rot_start, rot_end, rot_axes, pass_start, pass_end, pass_axes, rot_in, rot_out, pass_in, **_):
        result = pattern.MatchResult()
        for sliced in (rot_in, pass_in):
            if len(sliced.producer().inputs) > 4 and not _steps_one(sliced.producer().inputs[4]):
                return result.fail("strided slice", sliced)
        if rot_in.shape is None or rot_in.shape.rank() != 4:
            return result.fail("RotaryEmbedding input is not 4-D (the 3-D rule takes that form)", rot_in)
        return _check_split(result, x, rot_start, rot_end, rot_axes, pass_start, pass_end, pass_axes, rot_out.producer())

    def rewrite(self, op, x, rot_end, rot_out, **_):
        node = rot_out.producer()
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        return op.RotaryEmbedding(x, *node.inputs[1:3], **attrs, rotary_embedding_dim=_ints(rot_end)[0])


class PartialRotaryEmbedding3D(pattern.RewriteRuleClassBase):
    """GPT-J's [B, S, H, D] as the interleaved rule leaves it: Reshape(RotaryEmbedding(Reshape(x[..., :r])))."""

    def pattern(self, op, x, rot_start, rot_end, rot_axes, pass_start, pass_end, pass_axes, flat_shape, heads_shape):
        sliced = op.Slice(x, rot_start, rot_end, rot_axes, _allow_other_inputs=True, _outputs=["rot_in"])
        rotated = op.RotaryEmbedding(
            op.Reshape(sliced, flat_shape), _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["rot_out"]
        )
        passed = op.Slice(x, pass_start, pass_end, pass_axes, _allow_other_inputs=True, _outputs=["pass_in"])
        return op.Concat(op.Reshape(rotated, heads_shape), passed, axis=-1)

    def check(self, context, x, rot_start, rot_end, rot_axes, pass_start, pass_end, pass_axes, rot_in, rot_out, pass_in, **_):
        result = pattern.MatchResult()
        for sliced in (rot_in, pass_in):
            if len(sliced.producer().inputs) > 4 and not _steps_one(sliced.producer().inputs[4]):
                return result.fail("strided slice", sliced)
        heads = rot_out.producer().attributes.get_int("num_heads", 0)
        if x.shape is None or x.shape.rank() != 4 or heads != x.shape[2]:
            return result.fail("not the 3-D form of a [B, S, H, D] input", x)
        return _check_split(result, x, rot_start, rot_end, rot_axes, pass_start, pass_end, pass_axes, rot_out.producer())

    def rewrite(self, op, x, rot_end, rot_out, **_):
        node = rot_out.producer()
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        heads, size = x.shape[2], x.shape[3]
        flat = op.Reshape(x, op.Constant(value_ints=[0, 0, heads * size]))
        rotated = op.RotaryEmbedding(flat, *node.inputs[1:3], **attrs, rotary_embedding_dim=_ints(rot_end)[0])
        return op.Reshape(rotated, op.Constant(value_ints=[0, 0, heads, size]))


partial_rotary_embedding_rules = pattern.RewriteRuleSet([PartialRotaryEmbedding.rule(), PartialRotaryEmbedding3D.rule()])

fuse_partial_rotary_embedding = fusion_utils.apply_fusion_rules(partial_rotary_embedding_rules)
