"""Rewrite rule: RMSNormalization of a mean-centered input -> `LayerNormalization` (no bias).

Cohere's LayerNorm is written by hand without a bias:

    d = x - mean(x, -1);  y = weight * d / sqrt(mean(d ** 2, -1) + eps)

onnxscript's RMSNormalization fusion matches its second half, leaving
`RMSNormalization(Sub(x, ReduceMean(x)))`: correct, but two extra nodes and a full-size
intermediate per norm, and a LayerNorm that is not called one. That is LayerNormalization-17 with
the same epsilon and scale. A scale that is not over the normalized axis alone (Cohere's q/k norms
carry one row per head, [heads, head_dim]) is applied by a Mul after a unit-scale LayerNormalization,
which is what the op's own definition does with a broadcast scale.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils, ir_utils

__all__ = ["CenteredRmsNormalization", "centered_rms_normalization_rules", "fuse_centered_rms_normalization"]


class CenteredRmsNormalization(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, axes, scale):
        centered = op.Sub(x, op.ReduceMean(x, axes, keepdims=1, _allow_other_attributes=True))
        return op.RMSNormalization(centered, scale, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, axes, scale, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or x.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            return result.fail("x has no known rank or is not a float tensor", x)
        rank = x.shape.rank()
        mean_axes = ir_utils.get_numpy_value(axes)
        if mean_axes is None or [int(a) % rank for a in np.asarray(mean_axes).reshape(-1)] != [rank - 1]:
            return result.fail("the mean is not over the last axis only", axes)
        if y.producer().attributes.get_int("axis", -1) % rank != rank - 1:
            return result.fail("RMSNormalization is not over the last axis", y)
        if scale.shape is None or not isinstance(x.shape[-1], int):
            return result.fail("scale shape or normalized size unknown", scale)
        return result

    def rewrite(self, op, x, scale, y, **_):
        norm = y.producer()
        epsilon = norm.attributes.get_float("epsilon", 1e-5)
        stash = norm.attributes.get_int("stash_type", 1)
        size = x.shape[-1]
        if list(scale.shape) == [size]:
            return op.LayerNormalization(x, scale, axis=-1, epsilon=epsilon, stash_type=stash)
        ones = op.Constant(value=ir.tensor(np.ones(size, dtype=scale.dtype.numpy())))
        return op.Mul(op.LayerNormalization(x, ones, axis=-1, epsilon=epsilon, stash_type=stash), scale)


centered_rms_normalization_rules = pattern.RewriteRuleSet([CenteredRmsNormalization.rule()])

fuse_centered_rms_normalization = fusion_utils.apply_fusion_rules(centered_rms_normalization_rules)
