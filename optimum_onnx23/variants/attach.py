"""`attach_variant`: add a backend variant beside the main graph, leaving the main graph untouched."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import onnx_ir as ir

from ..errors import InvalidArgumentError, VariantFormatError
from ._model import AnyModel, as_ir, like, main_values
from .format import (
    FORMAT_VERSION,
    KEYS,
    VARIANT_DOMAIN,
    check_variant_name,
    content_hash,
    function_id,
    helper_domain,
    ops_used,
    owned_prefix,
    update_index,
    variant_functions,
)
from .providers import check_provider_names

__all__ = ["attach_variant"]


def _check_signature(name: str, body: ir.Function | ir.Graph, graph: ir.Graph, owned: Mapping) -> None:
    values = main_values(graph)
    seen: set[str] = set()
    for value in [*body.inputs, *body.outputs]:
        if value.name in seen:
            raise VariantFormatError(f"Variant {name} names value `{value.name}` twice; each input and output once.")
        seen.add(value.name)
    for value in body.inputs:
        if value.name not in values and value.name not in owned:
            raise VariantFormatError(
                f"Variant {name} consumes `{value.name}`, which is neither a main-graph value nor one of its own "
                "weights; name an existing value or pass the tensor in `owned`."
            )
    graph_inputs = {v.name for v in graph.inputs} | set(graph.initializers)
    for value in body.outputs:
        if value.name not in values:
            raise VariantFormatError(
                f"Variant {name} produces `{value.name}`, which the main graph does not have; a variant may only "
                "replace values the main graph computes."
            )
        if value.name in graph_inputs:
            raise VariantFormatError(
                f"Variant {name} produces `{value.name}`, a graph input or initializer; only node outputs can be replaced."
            )
        if value.producer() is None:
            raise VariantFormatError(
                f"Variant {name} output `{value.name}` is not computed by its body (a pass-through); drop it from the outputs."
            )
    try:
        body.sort()
    except ValueError:
        raise VariantFormatError(f"Variant {name} body has a cycle; its nodes must form a DAG.") from None


def attach_variant(
    model: AnyModel,
    name: str,
    body: ir.Graph,
    providers: Sequence[str],
    *,
    opset_imports: Mapping[str, int] | None = None,
    owned: Mapping[str, ir.TensorProtocol] | None = None,
    helpers: Sequence[ir.Function] = (),
    priority: int = 0,
    description: str = "",
    tolerance: str = "",
    replace: bool = False,
    validate: bool = True,
) -> AnyModel:
    """Attach variant `name` to `model` (in place for an `ir.Model`; a new proto for a `ModelProto`).

    `body` is the replacement region: its inputs are named after the main-graph values it consumes
    (or after entries of `owned`, the weights it owns, which must be named `variants/<name>/...`),
    its outputs after the main-graph values it replaces. `helpers` are model-local functions the
    body calls; they must live in the variant's own domain `helper_domain(name)`.

    Guarantees: no main-graph node, input, output or existing initializer is changed (owned weights
    are appended after the existing initializers, so external-data offsets do not move); with
    `validate`, substituting the variant is tried on a copy first, so a variant that references a
    missing value or creates a cycle is refused here rather than at session creation.
    """
    check_variant_name(name)
    providers = check_provider_names(list(providers))
    owned = dict(owned or {})
    m = as_ir(model, copy=False)
    graph = m.graph
    existing = {f.metadata_props.get(KEYS.NAME) for f in variant_functions(m)}
    if name in existing:
        if not replace:
            raise InvalidArgumentError(f"The model already carries variant {name}; strip it first or pass replace=True.")
        from .strip import strip_variants

        strip_variants(m, [name])
    taken = {f.identifier(): f.metadata_props.get(KEYS.NAME) for f in variant_functions(m)}
    if (VARIANT_DOMAIN, function_id(name), "") in taken:
        raise InvalidArgumentError(
            f"Variant name {name} maps to the function id of variant {taken[(VARIANT_DOMAIN, function_id(name), '')]}; "
            "choose a name that differs in more than '.', '_' or '-'."
        )
    prefix = owned_prefix(name)
    for tensor_name in owned:
        if not tensor_name.startswith(prefix):
            raise InvalidArgumentError(f"Owned weight `{tensor_name}` of variant {name} must be named `{prefix}...`.")
        if tensor_name in graph.initializers:
            raise InvalidArgumentError(f"Owned weight `{tensor_name}` already exists in the model; strip variant {name} first.")
    _check_signature(name, body, graph, owned)
    for helper in helpers:
        if helper.domain != helper_domain(name):
            raise InvalidArgumentError(
                f"Helper function {helper.name} of variant {name} must be in domain {helper_domain(name)}."
            )
    model_opsets = dict(m.opset_imports)
    imports = dict(opset_imports or {"": model_opsets.get("", 23)})
    for domain, version in imports.items():
        if domain in model_opsets and model_opsets[domain] != version:
            raise VariantFormatError(
                f"Variant {name} imports {domain or 'ai.onnx'} opset {version} but the model uses {model_opsets[domain]}; "
                "build the variant at the model's opset."
            )
    for helper in helpers:
        imports.update({d: v for d, v in helper.opset_imports.items() if d != ""})
    imports.update({helper_domain(name): 1} if helpers else {})

    function = ir.Function(VARIANT_DOMAIN, function_id(name), graph=body, attributes=[])
    function.opset_imports.clear()
    function.opset_imports.update(imports)
    for helper in helpers:
        m.functions[helper.identifier()] = helper
    m.functions[function.identifier()] = function
    for tensor_name, tensor in owned.items():
        graph.initializers.add(ir.Value(name=tensor_name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor))
    ops, opsets = ops_used([function], m)
    meta = function.metadata_props
    meta[KEYS.FORMAT] = FORMAT_VERSION
    meta[KEYS.NAME] = name
    meta[KEYS.PROVIDERS] = json.dumps(providers)
    meta[KEYS.OPS] = json.dumps(ops)
    meta[KEYS.OPSETS] = json.dumps(opsets)
    meta[KEYS.OWNED] = json.dumps(list(owned))
    meta[KEYS.PRIORITY] = str(int(priority))
    if description:
        meta[KEYS.DESCRIPTION] = description
    if tolerance:
        meta[KEYS.TOLERANCE] = tolerance
    meta[KEYS.SHA256] = content_hash(m, function)
    update_index(m)
    if validate:
        from .select import select_variant

        try:
            select_variant(m, variant=name, verify=False)
        except VariantFormatError:
            from .strip import strip_variants

            strip_variants(m, [name])
            raise
    return like(model, m)
