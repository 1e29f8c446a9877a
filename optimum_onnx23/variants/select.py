"""`select_variant`: substitute one variant into the main graph and return a plain ONNX model.

Substitution, as the working group described it: add the replacement (a call of the variant's
function on the main-graph values it names), rewire the consumers of the values it replaces,
remove the nodes nobody uses any more, inline the call, and re-sort topologically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx_ir as ir
from onnx_ir.passes.common import InlinePass, RemoveUnusedFunctionsPass, RemoveUnusedNodesPass

from ..errors import InvalidArgumentError, VariantFormatError, VariantNotFoundError
from ._model import AnyModel, as_ir, like, main_values
from .format import KEYS, MODEL_INDEX_KEY, SELECTED_KEY, content_hash, variant_functions
from .listing import list_variants
from .providers import choose_variant

__all__ = ["select_variant", "substitute", "MAIN"]

logger = logging.getLogger(__name__)

MAIN = "main"  # `variant=MAIN` asks for the main graph, every variant stripped


def substitute(model: ir.Model, function: ir.Function) -> None:
    """Replace, in place, the region `function` covers by its body; other variants are left alone.

    Raises VariantFormatError if a named value is missing or the result has a cycle.
    """
    graph = model.graph
    name = function.metadata_props.get(KEYS.NAME, function.name)
    values = main_values(graph)
    missing = [v.name for v in [*function.inputs, *function.outputs] if v.name not in values]
    if missing:
        raise VariantFormatError(
            f"Variant {name} names values the main graph lacks ({', '.join(missing[:3])}); the variant does not fit "
            "this graph: strip it or re-attach it."
        )
    call = ir.Node(
        function.domain,
        function.name,
        [values[v.name] for v in function.inputs],
        num_outputs=len(function.outputs),
        name=f"variant::{name}",
    )
    for old, new in zip([values[v.name] for v in function.outputs], call.outputs):
        if old.producer() is None:
            raise VariantFormatError(f"Variant {name} replaces `{old.name}`, which no main-graph node computes.")
        value_name = old.name
        new.type, new.shape = old.type, old.shape  # what the main graph declared stays declared
        old.name = f"{value_name}__replaced_by_variant"
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        new.name = value_name
    graph.append(call)
    RemoveUnusedNodesPass()(model)
    InlinePass(criteria=lambda f: f is function)(model)
    try:
        graph.sort()
    except ValueError:
        raise VariantFormatError(
            f"Substituting variant {name} creates a cycle: it consumes a value computed from one it replaces; "
            "the region it covers is not closed, so re-attach it with a convex region."
        ) from None


def _pick(model: ir.Model, providers: Sequence | None, variant: str | None):
    infos = list_variants(model)
    if variant is not None:
        if variant == MAIN:
            return None
        for info in infos:
            if info.name == variant:
                return info
        raise VariantNotFoundError(
            f"The model has no variant {variant!r}; it has: {', '.join(i.name for i in infos) or 'none'}."
        )
    if providers is None:
        raise InvalidArgumentError("select_variant needs `providers` (e.g. ['CPUExecutionProvider']) or `variant`.")
    return choose_variant(infos, providers)


def select_variant(
    model: AnyModel,
    providers: Sequence | None = None,
    *,
    variant: str | None = None,
    verify: bool = True,
    copy: bool = True,
) -> AnyModel:
    """The model with the variant for `providers[0]` (or the one named `variant`; `"main"` for
    none) substituted and every variant stripped: a plain ONNX model any runtime can load.

    The input model is not modified (weights are shared with it, not copied) unless `copy=False`
    is passed for an `ir.Model` the caller no longer needs, which saves cloning it. With `verify`, the
    variant's content hash is checked first. The chosen name is recorded in the model metadata
    under `optimum_onnx23.selected_variant` (empty when the main graph was kept).
    """
    source = as_ir(model, copy=False)
    info = _pick(source, providers, variant)
    m = as_ir(model, copy=copy) if isinstance(model, ir.Model) else source
    functions = {f.metadata_props.get(KEYS.NAME): f for f in variant_functions(m)}
    if info is not None:
        function = functions[info.name]
        if verify and content_hash(m, function) != info.sha256:
            raise VariantFormatError(
                f"Variant {info.name} fails its content hash: the file was changed after it was attached; "
                "re-attach it or strip it."
            )
        substitute(m, function)
    for other in [f for n, f in functions.items() if info is None or n != info.name]:
        del m.functions[other.identifier()]
    RemoveUnusedNodesPass()(m)  # owned weights of the variants not chosen, main weights the variant replaced
    RemoveUnusedFunctionsPass()(m)
    m.metadata_props.pop(MODEL_INDEX_KEY, None)
    m.metadata_props[SELECTED_KEY] = info.name if info is not None else ""
    return like(model, m)
