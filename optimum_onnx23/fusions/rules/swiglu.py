"""Fuse a SiLU-gated product into the standard opset-28 `SwiGLU` op.

torch writes the gated MLP's `act_fn(gate_proj(x)) * up_proj(x)` with `act_fn = silu` as

    Mul(Mul(gate, Sigmoid(gate)), up)

`SwiGLU(A, B, alpha)` is `Swish_alpha(A) * B` = `A * Sigmoid(alpha * A) * B`: the *first* input
is the gated one, and SiLU is Swish with `alpha = 1`. Both products are matched in either operand
order. The op does not broadcast, so the rule fuses only where gate and up have the same known
shape (a packed projection split in two halves, phi3's `gate_up_proj`, included); other SiLU uses
(Mamba's gate, a SiLU not multiplied by anything) stay as they are. Runs at opset >= 28 only.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..._onnxscript_compat import fusion_utils

__all__ = ["SwiGLUFusion", "swiglu_rules", "fuse_swiglu", "SWIGLU_OPSET"]

SWIGLU_OPSET = 28


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    return all(x == y and x is not None for x, y in zip(a.shape, b.shape))


class SwiGLUFusion(pattern.RewriteRuleClassBase):
    def __init__(self):
        super().__init__("SwiGLU")

    def pattern(self, op, gate, up):
        return op.Mul(op.Mul(gate, op.Sigmoid(gate)), up)

    def check(self, context, gate, up, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if gate is up:
            return result.fail("Gate and value are the same tensor (x * silu(x) is not a gated MLP).")
        if not _same_shape(gate, up):
            return result.fail("Gate and value shapes differ or are unknown (SwiGLU does not broadcast).", [gate, up])
        return result

    def rewrite(self, op, gate, up, **_):
        return op.SwiGLU(gate, up, alpha=1.0)


swiglu_rules = pattern.RewriteRuleSet([SwiGLUFusion.rule()], commute=True)

fuse_swiglu = fusion_utils.apply_fusion_rules(swiglu_rules)
