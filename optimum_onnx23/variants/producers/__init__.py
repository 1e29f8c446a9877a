"""Built-in variant producers, one per file: each reads a main graph and returns a `VariantSpec`."""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from . import backend_context, int4, int8, ort_cpu, ort_cpu_functions, ort_cpu_int4, ort_cpu_int8, ort_cpu_moe, portable_opset21
from .spec import VariantSpec

__all__ = ["BUILTIN", "VariantSpec", "produce"]

BUILTIN: dict[str, Callable[..., VariantSpec]] = {
    int4.NAME: int4.produce,
    int8.NAME: int8.produce,
    ort_cpu_int4.NAME: ort_cpu_int4.produce,
    ort_cpu_int8.NAME: ort_cpu_int8.produce,
    ort_cpu_moe.NAME: ort_cpu_moe.produce,
    ort_cpu.NAME: ort_cpu.produce,
    backend_context.NAME: backend_context.produce,
    portable_opset21.NAME: portable_opset21.produce,
    ort_cpu_functions.NAME: ort_cpu_functions.produce,
}


def produce(name: str, model: ir.Model, **options) -> VariantSpec:
    from ...errors import InvalidArgumentError

    if name not in BUILTIN:
        raise InvalidArgumentError(f"Unknown built-in variant {name!r}; choose from: {', '.join(BUILTIN)}.")
    return BUILTIN[name](model, **options)
