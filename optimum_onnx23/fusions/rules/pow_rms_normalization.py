"""Rewrite rule: RMSNorm written with `pow(ms + eps, -0.5)` -> `RMSNormalization`.

Gemma 4 computes `x * torch.pow(mean(x ** 2, -1) + eps, -0.5)` (a JAX-parity choice) instead of
`rsqrt`, which onnxscript's RMSNormalization fusion (Sqrt + Reciprocal) does not match; its value
norm has no scale at all. Both are RMSNormalization-23 over the last axis: with the scale that
multiplies the result, or with a unit scale.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils, ir_utils
from ._tables import ints as _ints

__all__ = ["PowRmsNormalization", "pow_rms_normalization_rules", "fuse_pow_rms_normalization"]


def _core(op, x, axes, epsilon, two, minus_half):
    mean_square = op.ReduceMean(op.Pow(x, two), axes, keepdims=1, _allow_other_attributes=True)
    return op.Mul(x, op.Pow(op.Add(mean_square, epsilon), minus_half), _outputs=["normalized"])


def _scale_of(normalized: ir.Value, size) -> ir.Value | None:
    """The constant [size] scale the normalized value is multiplied by, if that is its only use."""
    uses = list(normalized.uses())
    if len(uses) != 1 or uses[0].node.op_type != "Mul":
        return None
    other = [v for v in uses[0].node.inputs if v is not normalized]
    if len(other) != 1 or other[0].const_value is None or list(other[0].shape or []) != [size]:
        return None
    return other[0]


class PowRmsNormalization(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, scaled: bool):
        super().__init__(name)
        self._scaled = scaled

    def pattern(self, op, x, axes, epsilon, two, minus_half, scale):
        normalized = _core(op, x, axes, epsilon, two, minus_half)
        return op.Mul(normalized, scale) if self._scaled else normalized

    def check(self, context, x, axes, epsilon, two, minus_half, normalized, scale=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or not isinstance(x.shape[-1], int) or x.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
            return result.fail("x is not a float tensor with a static last axis", x)
        rank = x.shape.rank()
        if [a % rank for a in (_ints(axes) or [])] != [rank - 1]:
            return result.fail("the mean is not over the last axis only", axes)
        if ir_utils.get_singleton_value(two) != 2 or ir_utils.get_singleton_value(minus_half) != -0.5:
            return result.fail("not x ** 2 and (...) ** -0.5")
        if not isinstance(ir_utils.get_singleton_value(epsilon), float):
            return result.fail("epsilon is not a constant float", epsilon)
        if self._scaled:
            if scale.const_value is None or list(scale.shape or []) != [x.shape[-1]]:
                return result.fail("the scale is not a constant over the normalized axis", scale)
        elif _scale_of(normalized, x.shape[-1]) is not None:
            return result.fail("scaled: the scaled rule takes it")
        return result

    def rewrite(self, op, x, epsilon, scale=None, **_):
        if not self._scaled:
            scale = op.Constant(value=ir.tensor(np.ones(x.shape[-1], dtype=x.dtype.numpy())))
        return op.RMSNormalization(x, scale, axis=-1, epsilon=float(ir_utils.get_singleton_value(epsilon)), stash_type=1)


pow_rms_normalization_rules = pattern.RewriteRuleSet(
    [PowRmsNormalization.rule("PowRmsNormalizationScaled", True), PowRmsNormalization.rule("PowRmsNormalization", False)],
    commute=True,
)

fuse_pow_rms_normalization = fusion_utils.apply_fusion_rules(pow_rms_normalization_rules)
