"""`portable-opset21`: the main graph for runtimes without the opset-23 GenAI ops.

Every standard op the model uses that opset 21 does not define (`Attention`, `RMSNormalization`,
`RotaryEmbedding`, added in opset 23) is replaced by the body ONNX's own specification gives it
(`_expand.expand_ops`: the op's context-dependent function for the node, constant-folded for its
shapes, zero-length `Split` outputs dropped). The variant imports the model's opset like every
variant, but every op in its selected graph is one that opset 21 already defines, which is what
onnxruntime's OpenVINO provider (1.24, OpenVINO 2025.4) needs: it refuses the graph at the first
`Attention` otherwise. It owns no weights: the body reads the main graph's.

`base=NAME` builds the same form over another variant's graph instead of the main graph: the
variant `NAME` is substituted first, then the GenAI ops are expanded. The result, named
`portable-opset21.NAME`, reads `NAME`'s own weights by name (its packed int4 blocks, say) without
copying them, so it depends on `NAME`: stripping `NAME` strips it too (`strip.py`).
`attach_builtin_variants` makes one for every weight-owning variant in the file when
`portable-opset21` is attached, whatever the order: a session on the OpenVINO provider then gets
the int4 (or int8) weights in portable form (its priority is above `portable-opset21`'s).
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnx_ir as ir

from ...errors import VariantNotApplicableError
from ._diff import region_from_rewrite
from ._expand import expand_ops, newer_ops
from .spec import VariantSpec

__all__ = ["NAME", "PROVIDERS", "PRIORITY", "TARGET_OPSET", "produce", "combined_name", "portable_region"]

NAME = "portable-opset21"
PROVIDERS = ["OpenVINOExecutionProvider"]
PRIORITY = 10
TARGET_OPSET = 21


def combined_name(base: str) -> str:
    """The name of the portable form of variant `base`."""
    return f"{NAME}.{base}"


def _has_body(op: str, opset: int) -> bool:
    schema = onnx.defs.get_schema(op, opset, "")
    return bool(schema.has_function or schema.has_context_dependent_function)


def portable_region(model: ir.Model, base: str | None = None, tag: str = NAME) -> tuple[ir.Graph, Counter]:
    """(region body, counts of ops expanded) for the main graph, or for variant `base`'s graph."""
    from onnx_ir.passes.common import ShapeInferencePass

    from ..select import select_variant

    opset = model.opset_imports.get("", 23)
    # Types first: the bodies are specialised for each node's input types. A substituted variant's
    # outputs keep the main values' declared types, so inferring before substituting is enough.
    source = ShapeInferencePass()(model.clone()).model
    if base is not None:
        source = select_variant(source, variant=base, copy=False)
    ops = newer_ops(source.graph, TARGET_OPSET)
    stuck = [op for op in ops if not _has_body(op, opset)]
    if stuck:
        raise VariantNotApplicableError(
            f"{tag}: {', '.join(stuck)} is newer than opset {TARGET_OPSET} and ONNX defines no function body for it "
            "(a static-cache export's TensorScatter, say); export without that option for a portable form."
        )
    if not ops:
        raise VariantNotApplicableError(f"{tag}: every op of this graph is already in opset {TARGET_OPSET}; nothing to expand.")
    counts = expand_ops(source, ops)
    left = newer_ops(source.graph, TARGET_OPSET)
    if left:  # inside an If/Loop/Scan body (no export puts them there), or a body using a newer op (an onnx bug)
        raise VariantNotApplicableError(f"{tag}: expanding left {', '.join(left)}, newer than opset {TARGET_OPSET}.")
    body = region_from_rewrite(model, source, tag)
    if body is None:
        raise VariantNotApplicableError(f"{tag}: expanding changed nothing.")
    return body, counts


def produce(model: ir.Model, base: str | None = None) -> VariantSpec:
    """The portable form of the main graph, or of the variant `base` (named `portable-opset21.BASE`)."""
    from ..format import KEYS, variant_functions

    name = NAME if base is None else combined_name(base)
    priority = PRIORITY
    if base is not None:
        functions = {f.metadata_props.get(KEYS.NAME): f for f in variant_functions(model)}
        if base not in functions:
            raise VariantNotApplicableError(f"{name}: the model carries no variant {base}; attach it first.")
        priority += int(functions[base].metadata_props.get(KEYS.PRIORITY, "0"))
    body, counts = portable_region(model, base, name)
    expanded = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()) if op != "Split outputs dropped")
    over = "the main graph" if base is None else f"variant {base} (its weights read by name, not copied)"
    return VariantSpec(
        name=name,
        body=body,
        providers=list(PROVIDERS),
        opset_imports={"": model.opset_imports.get("", 23), **{d: model.opset_imports.get(d, 1) for d in sorted({n.domain for n in body}) if d not in ("", "ai.onnx")}},
        priority=priority,
        description=f"{over} with {expanded} expanded into their ONNX function bodies (opset-{TARGET_OPSET} ops only), "
        f"folded; {counts['Split outputs dropped']} zero-length Split outputs dropped",
        tolerance="fp32: within 1e-4 of " + ("the main graph" if base is None else f"variant {base}"),
    )


# Non-standard ops a base variant may use for its portable form: those onnxruntime's OpenVINO
# provider (1.24.1) runs itself, checked with `session.disable_cpu_ep_fallback=1`.
BASE_OPS = frozenset({"com.microsoft::MatMulNBits", "com.microsoft::SkipSimplifiedLayerNormalization"})


def bases(infos: list) -> list[str]:
    """The carried variants (`VariantInfo`s) that get a portable form: those owning weights (their
    form cannot be had from the main graph) whose non-standard ops are all in `BASE_OPS`."""
    found = []
    for info in infos:
        if info.name.startswith(NAME) or not info.owned_initializers:
            continue
        foreign = {op for op in info.ops if not op.startswith("ai.onnx::")}
        if foreign <= BASE_OPS:
            found.append(info.name)
    return found
