"""The on-disk format of backend variants, written with today's ONNX proto (see docs/variants.md).

A variant is one model-local function in the private domain `VARIANT_DOMAIN`. Its formal inputs and
outputs carry the *names of main-graph values*: the inputs are the values it consumes (activations
and the main graph's initializers: weights are passed, never copied), the outputs are the values it
replaces. Weights a variant owns (packed int4 blocks, int8 weights) are main-graph initializers
named `variants/<name>/...`, unused by the main graph. Helper functions of a variant live in its
own domain `VARIANT_DOMAIN.<id>`. The function's `metadata_props` describe it (keys below).

Nothing here changes a main-graph node, so a runtime that ignores variants runs the main graph.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

import onnx_ir as ir

from ..contract import SELECTED_VARIANT_KEY, VARIANT_DOMAIN, VARIANTS_INDEX_KEY
from ..errors import InvalidArgumentError, VariantFormatError

__all__ = [
    "FORMAT_VERSION",
    "VARIANT_DOMAIN",
    "MODEL_INDEX_KEY",
    "SELECTED_KEY",
    "KEYS",
    "VariantInfo",
    "check_variant_name",
    "function_id",
    "helper_domain",
    "owned_prefix",
    "variant_functions",
    "read_info",
    "info_from_metadata",
    "content_hash",
    "update_index",
    "ops_used",
]

FORMAT_VERSION = "1"
MODEL_INDEX_KEY = VARIANTS_INDEX_KEY
SELECTED_KEY = SELECTED_VARIANT_KEY


class KEYS:
    """`metadata_props` keys of a variant function."""

    FORMAT = "variant.format"
    NAME = "variant.name"
    PROVIDERS = "variant.providers"  # JSON list of onnxruntime execution provider names, first-provider match
    OPS = "variant.ops"  # JSON list of `domain::op` the body needs (helpers' bodies included)
    OPSETS = "variant.opsets"  # JSON {domain: version} the body imports
    OWNED = "variant.owned_initializers"  # JSON list of main-graph initializers this variant owns
    PRIORITY = "variant.priority"  # int: among variants for the same provider, the highest is chosen
    DESCRIPTION = "variant.description"
    TOLERANCE = "variant.tolerance"  # free text: how far its outputs may differ from the main graph
    SHA256 = "variant.sha256"  # content hash: the function, its helpers and its owned weights


_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_variant_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgumentError(
            f"Invalid variant name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-' (e.g. `ort-cpu-int4`)."
        )
    return name


def function_id(name: str) -> str:
    """The function name of a variant: its name as an identifier (`ort-cpu-int4` -> `ort_cpu_int4`)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def helper_domain(name: str) -> str:
    """The private domain of a variant's helper functions (so two variants never clash)."""
    return f"{VARIANT_DOMAIN}.{function_id(name)}"


def owned_prefix(name: str) -> str:
    return f"variants/{name}/"


@dataclass
class VariantInfo:
    """What `list_variants` reports of one variant, read from its function's metadata."""

    name: str
    providers: list[str]
    consumes: list[str]
    produces: list[str]
    ops: list[str]
    opsets: dict[str, int]
    owned_initializers: list[str]
    owned_bytes: int
    priority: int
    sha256: str
    description: str = ""
    tolerance: str = ""
    helpers: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)  # other variants producing some of the same values

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def variant_functions(model: ir.Model) -> list[ir.Function]:
    """The variant functions of `model`, in file order."""
    return [f for f in model.functions.values() if f.domain == VARIANT_DOMAIN]


def _json(meta: dict, key: str, default, where: str):
    raw = meta.get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise VariantFormatError(f"Variant {where}: metadata {key} is not JSON ({error.msg}); re-attach the variant.") from None


def info_from_metadata(meta: dict, where: str, consumes: list[str], produces: list[str]) -> VariantInfo:
    """A `VariantInfo` from a variant function's metadata (owned bytes and helpers left empty)."""
    name = meta.get(KEYS.NAME)
    if name is None or meta.get(KEYS.FORMAT) != FORMAT_VERSION:
        raise VariantFormatError(
            f"Function {where} has no variant metadata of format {FORMAT_VERSION}; "
            "strip it with `optimum-cli onnx23 variants strip` and attach it again."
        )
    try:
        priority = int(meta.get(KEYS.PRIORITY, "0"))
    except ValueError:
        raise VariantFormatError(f"Variant {name}: priority {meta[KEYS.PRIORITY]!r} is not an integer; re-attach it.") from None
    return VariantInfo(
        name=name,
        providers=_json(meta, KEYS.PROVIDERS, [], name),
        consumes=consumes,
        produces=produces,
        ops=_json(meta, KEYS.OPS, [], name),
        opsets=_json(meta, KEYS.OPSETS, {}, name),
        owned_initializers=_json(meta, KEYS.OWNED, [], name),
        owned_bytes=0,
        priority=priority,
        sha256=meta.get(KEYS.SHA256, ""),
        description=meta.get(KEYS.DESCRIPTION, ""),
        tolerance=meta.get(KEYS.TOLERANCE, ""),
    )


def read_info(model: ir.Model, function: ir.Function) -> VariantInfo:
    info = info_from_metadata(
        dict(function.metadata_props), f"{function.domain}::{function.name}",
        [v.name for v in function.inputs], [v.name for v in function.outputs],
    )
    inits = model.graph.initializers
    info.owned_bytes = sum(
        inits[n].const_value.nbytes for n in info.owned_initializers if n in inits and inits[n].const_value is not None
    )
    info.helpers = [f.name for f in model.functions.values() if f.domain == helper_domain(info.name)]
    return info


def ops_used(functions: list[ir.Function], model: ir.Model) -> tuple[list[str], dict[str, int]]:
    """`domain::op` of every node in `functions`, following calls into model-local functions, and
    the opsets they import (model-local function domains excluded: they travel with the file)."""
    ops: set[str] = set()
    opsets: dict[str, int] = {}
    seen: set[tuple] = set()
    stack = list(functions)
    while stack:
        function = stack.pop()
        if function.identifier() in seen:
            continue
        seen.add(function.identifier())
        for domain, version in function.opset_imports.items():
            if not domain.startswith(VARIANT_DOMAIN):
                opsets[domain] = version
        for node in ir.traversal.RecursiveGraphIterator(function):
            callee = model.functions.get(node.op_identifier())
            if callee is not None:
                stack.append(callee)
                continue
            ops.add(f"{node.domain or 'ai.onnx'}::{node.op_type}")
    return sorted(ops), dict(sorted(opsets.items()))


def content_hash(model: ir.Model, function: ir.Function) -> str:
    """sha256 of the variant's function (its hash entry excluded), its helper functions and the
    bytes of the weights it owns; shared main-graph weights are covered by name only."""
    digest = hashlib.sha256()
    name = function.metadata_props.get(KEYS.NAME, function.name)
    functions = [function, *(f for f in model.functions.values() if f.domain == helper_domain(name))]
    for f in functions:
        proto = ir.serde.serialize_function(f)
        kept = [p for p in proto.metadata_props if p.key != KEYS.SHA256]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        digest.update(proto.SerializeToString(deterministic=True))
    for init_name in json.loads(function.metadata_props.get(KEYS.OWNED, "[]")):
        value = model.graph.initializers.get(init_name)
        if value is None or value.const_value is None:
            raise VariantFormatError(
                f"Variant {name} owns initializer {init_name}, which the model lacks; re-attach the variant."
            )
        tensor = value.const_value
        digest.update(f"{init_name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.tobytes())
    return digest.hexdigest()


def update_index(model: ir.Model) -> None:
    """Keep the model-level list of variant names (read by tools that only see metadata)."""
    names = [f.metadata_props.get(KEYS.NAME, f.name) for f in variant_functions(model)]
    if names:
        model.metadata_props[MODEL_INDEX_KEY] = json.dumps(names)
    else:
        model.metadata_props.pop(MODEL_INDEX_KEY, None)
