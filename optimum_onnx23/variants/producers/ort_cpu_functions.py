"""`ort-cpu-functions`: the main graph with the standard ops onnxruntime has no kernel for
replaced by the function bodies ONNX defines for them.

ONNX defines its newest ops as functions, so that a runtime without a kernel inlines the body.
onnxruntime 1.32 does inline a function op, but only one level: opset 28's `SwiGLU` expands to
`Swish(24)` and `Mul`, and its CPU provider has no `Swish` kernel either, so a session on an
opset-28 graph with `SwiGLU` fails ("Could not find an implementation for Swish(24)"). This
variant expands, in place of each such node, the op's body (`_expand.expand_ops`, attributes bound,
folded for the node's shapes), again for any op of that body without a kernel, until every op
has one: `SwiGLU(A, B)` becomes `Mul(Mul(A, Sigmoid(Mul(CastLike(1.0), A))), B)`. It owns no
weights and reads the main graph's values by name.

The export attaches it when the main graph needs it (and validates the graph onnxruntime then
runs); a session on the CPU provider selects it. Guarantees: the body is the op's specification,
so the outputs equal the main graph's as onnx's reference evaluator computes them.
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnx_ir as ir

from ...errors import VariantNotApplicableError
from ._diff import region_from_rewrite
from ._expand import expand_ops
from .spec import VariantSpec

__all__ = ["NAME", "PROVIDERS", "PRIORITY", "produce", "ops_without_kernel"]

NAME = "ort-cpu-functions"
PROVIDERS = ["CPUExecutionProvider"]
# Above every other CPU variant: the others keep the main graph's function ops, which this
# onnxruntime cannot run (a graph needing this one fails in any other).
PRIORITY = 50
_MAX_DEPTH = 4  # function bodies nest one or two levels (SwiGLU -> Swish -> Sigmoid)


def _has_body(op: str, opset: int) -> bool:
    try:
        schema = onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def ops_without_kernel(graph: ir.Graph, opset: int, provider: str = "CPUExecutionProvider") -> list[str]:
    """Standard ops of `graph` (main graph only) with an ONNX function body and no kernel of this
    onnxruntime on `provider`. Empty where the build cannot list its kernels."""
    from ..runtime import has_kernel

    found = set()
    for node in graph:
        if node.domain in ("", "ai.onnx") and node.op_type != "Constant" and _has_body(node.op_type, opset):
            if has_kernel(node.op_type, provider) is False:
                found.add(node.op_type)
    return sorted(found)


def produce(model: ir.Model) -> VariantSpec:
    from onnx_ir.passes.common import ShapeInferencePass

    opset = model.opset_imports.get("", 23)
    source = ShapeInferencePass()(model.clone()).model
    counts: Counter = Counter()
    for _ in range(_MAX_DEPTH):
        ops = ops_without_kernel(source.graph, opset)
        if not ops:
            break
        counts += expand_ops(source, ops)
        source = ShapeInferencePass()(source).model
    else:
        raise VariantNotApplicableError(f"{NAME}: {', '.join(ops_without_kernel(source.graph, opset))} still without a kernel after expanding.")
    if not counts:
        raise VariantNotApplicableError(f"{NAME}: onnxruntime has a kernel for every op of this graph; nothing to expand.")
    body = region_from_rewrite(model, source, NAME)
    if body is None:
        raise VariantNotApplicableError(f"{NAME}: expanding changed nothing.")
    expanded = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()) if op != "Split outputs dropped")
    return VariantSpec(
        name=NAME,
        body=body,
        providers=list(PROVIDERS),
        opset_imports={"": opset},
        priority=PRIORITY,
        description=f"the main graph with {expanded} expanded into their ONNX function bodies (no onnxruntime kernel), folded",
        tolerance="fp32: within 1e-5 of the main graph",
    )
