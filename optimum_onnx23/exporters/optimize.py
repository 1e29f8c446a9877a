"""onnxscript's graph optimizer (`onnxscript.optimizer.optimize_ir`), minus its quadratic rules.

`optimize_ir` runs onnxscript's default rewrite rules; the ones whose pattern has several output
nodes (`SlicesSplit`) are matched by trying every node of the graph against each candidate, which
is quadratic in the graph size: 31 s of a 36 s optimization on the SmolLM-135M-shaped Llama
(30 layers), for no change to its graph there (the same 670 nodes after fusion either way).
This is `optimize_ir`'s pass list with those rules left out; everything else is identical.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter
from onnxscript.optimizer import _constant_folding

__all__ = ["optimize"]


def _linear_time_rules() -> list:
    return [
        rule
        for rule in rewriter._DEFAULT_REWRITE_RULES
        if getattr(rule, "_target_pattern", None) is None or rule._target_pattern.has_single_output_node
    ]


def optimize(model: ir.Model, num_iterations: int = 2) -> None:
    """Constant folding, onnxscript's single-output rewrite rules, unused-node removal, constant
    lifting, initializer deduplication and CSE, in place, as `optimize_ir` runs them."""
    passes = ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                    output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
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
