"""onnxscript's graph optimizer (`onnxscript.optimizer.optimize_ir`), minus its quadratic rules.

`optimize_ir` runs onnxscript's default rewrite rules; the ones whose pattern has several output
nodes (`SlicesSplit`) are matched by trying every node of the graph against each candidate, which
is quadratic in the graph size: 31 s of a 36 s optimization on the SmolLM-135M-shaped Llama
(30 layers), for no change to its graph there (the same 670 nodes after fusion either way).
This is `optimize_ir`'s pass list with those rules left out, and its no-op rules (`x + 0`, `x * 1`)
matching exact constants only (below); everything else is identical.

Guarantee: the graph computes what it computed before (constant folding and rewrites that
preserve values); only onnxscript's rules with a single output node run, so the pass is linear in
the graph size.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter
from onnxscript.rewriter import pattern

from ..._onnxscript_compat import DEFAULT_REWRITE_RULES, constant_folding, has_single_output_node, no_op_rules

__all__ = ["optimize"]


def _exact(value: float):
    return pattern.Constant(value, rel_tol=0.0, abs_tol=0.0)


def _identity(op, x, **_):
    return op.Identity(x)


# onnxscript's no-op rules compare constants with abs_tol 1e-8 / rel_tol 1e-5, so `x + 1e-8` counts
# as `x + 0`: helium's RMSNorm lost its epsilon (1e-8) that way, and with it the RMSNormalization
# fusion. These match only the exact identity constants.
_EXACT_NO_OP_RULES = [
    pattern.RewriteRule(lambda op, x: op.Add(x, _exact(0.0)), _identity),
    pattern.RewriteRule(lambda op, x: op.Add(_exact(0.0), x), _identity),
    pattern.RewriteRule(lambda op, x: op.Sub(x, _exact(0.0)), _identity),
    pattern.RewriteRule(lambda op, x: op.Mul(x, _exact(1.0)), _identity),
    pattern.RewriteRule(lambda op, x: op.Mul(_exact(1.0), x), _identity),
    pattern.RewriteRule(lambda op, x: op.Div(x, _exact(1.0)), _identity),
]


def _linear_time_rules() -> list:
    approximate = {id(rule) for rule in no_op_rules.rules.rules} - {id(no_op_rules.dropout_zero_rule), id(no_op_rules.dropout_inference_rule)}
    return _EXACT_NO_OP_RULES + [rule for rule in DEFAULT_REWRITE_RULES if has_single_output_node(rule) and id(rule) not in approximate]


def optimize(model: ir.Model, num_iterations: int = 2) -> None:
    """Constant folding, onnxscript's single-output rewrite rules, unused-node removal, constant
    lifting, initializer deduplication and CSE, in place, as `optimize_ir` runs them."""
    passes = ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager(
            [
                constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                    output_size_limit=constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                ),
                rewriter.RewritePass(_linear_time_rules()),
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ],
            steps=num_iterations,
            early_stop=True,
        ),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )
    passes(model)
