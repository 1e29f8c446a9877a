"""Every private onnxscript name the package uses, in one place, each with the reason it is used.

onnxscript (0.7) has no public API for these; pyproject.toml bounds onnxscript below the next
minor release (`<0.8`) so that a rename there fails at install, not at run time, and a new release
is adopted by checking this one file. Nothing else in the package imports a private onnxscript name
(tests/test_structure.py checks it).
"""

from __future__ import annotations

# The graph optimizer (exporters/passes/optimize.py) is `onnxscript.optimizer.optimize_ir` minus
# its quadratic rules: `optimize_ir` takes no rule list, so its pass list is rebuilt from these.
from onnxscript import rewriter as _rewriter
from onnxscript.optimizer import _constant_folding as constant_folding  # FoldConstantsPass and its size limits
from onnxscript.rewriter import _fusion_utils as fusion_utils  # apply_fusion_rules, check_shape: every fusion rule
from onnxscript.rewriter import _ir_utils as ir_utils  # get_singleton_value, get_numpy_value: constant checks in rules

# onnxscript's own fusions (fusions/__init__.py runs them beside ours, in order).
from onnxscript.rewriter.rules.common import _no_op as no_op_rules  # the approximate no-op rules optimize.py replaces
from onnxscript.rewriter.rules.fusion import _gqa as gqa_fusion
from onnxscript.rewriter.rules.fusion import _rms_normalization as rms_normalization_fusion
from onnxscript.rewriter.rules.fusion import _rotary_embedding as rotary_embedding_fusion

__all__ = [
    "DEFAULT_REWRITE_RULES",
    "RotaryEmbedding23Fusion",
    "constant_folding",
    "fusion_utils",
    "gqa_fusion",
    "has_single_output_node",
    "ir_utils",
    "no_op_rules",
    "rms_normalization_fusion",
    "rotary_embedding_fusion",
    "rotate_half_pattern",
]

# The rules `optimize_ir` applies by default (optimize.py filters them).
DEFAULT_REWRITE_RULES = _rewriter._DEFAULT_REWRITE_RULES
# The rotary fusion's class and its rotate-half sub-pattern, extended by fusions/rules/rotary_embedding_cast.py.
RotaryEmbedding23Fusion = rotary_embedding_fusion.RotaryEmbedding23Fusion
rotate_half_pattern = rotary_embedding_fusion._rotate_half_pattern


def has_single_output_node(rule) -> bool:
    """Whether a rewrite rule's pattern has one output node (matched in linear time); rules without a
    target pattern count as such. Read from the rule's private `_target_pattern`."""
    target = getattr(rule, "_target_pattern", None)
    return target is None or target.has_single_output_node
