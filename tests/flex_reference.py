"""onnx.reference's `ai.onnx.preview.FlexAttention`, with the outer scope its modifier graphs read.

onnx 1.23's reference op runs `score_mod` with the scores as its only feed: a modifier graph that
reads a value of the enclosing graph (ours read the padding mask and the cache offset, as `If` and
`Loop` bodies may) fails with "Unable to find input". This subclass asks the evaluator for the
context (what the reference `If` does) and feeds it alongside the scores; the computation is the
reference's own `_compute_flex_attention`.
"""

from __future__ import annotations

from onnx.reference.ops.aionnx_preview import op_flex_attention as reference

__all__ = ["FlexAttention"]


class _ScopedGraph:
    """A modifier evaluator whose `run` adds the enclosing graph's results to its feeds."""

    def __init__(self, evaluator, context):
        self.evaluator, self.context = evaluator, context
        self.input_names = evaluator.input_names

    def run(self, outputs, feeds, attributes=None):
        return self.evaluator.run(outputs, {**self.context, **feeds}, attributes=attributes)


class FlexAttention(reference.FlexAttention):
    """Registered by class name: `ReferenceEvaluator(model, new_ops=[FlexAttention])`."""

    op_domain = "ai.onnx.preview"

    def need_context(self) -> bool:
        return True

    def _run(self, Q, K, V, scale=None, score_mod=None, prob_mod=None, softmax_precision=None, context=None, **_):
        scope = dict(context or {})
        return reference._compute_flex_attention(
            Q, K, V, scale=scale,
            score_mod=_ScopedGraph(score_mod, scope) if score_mod is not None else None,
            prob_mod=_ScopedGraph(prob_mod, scope) if prob_mod is not None else None,
            softmax_precision=softmax_precision,
        )
