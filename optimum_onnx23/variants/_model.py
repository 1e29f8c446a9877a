"""Accept `onnx.ModelProto` or `onnx_ir.Model` and give back the same kind."""

from __future__ import annotations

from typing import Callable, TypeVar, Union

import onnx
import onnx_ir as ir

__all__ = ["AnyModel", "as_ir", "like", "main_values"]

AnyModel = Union[ir.Model, onnx.ModelProto]
T = TypeVar("T", ir.Model, onnx.ModelProto)


def as_ir(model: AnyModel, copy: bool) -> ir.Model:
    """An `ir.Model` of `model`; with `copy`, one whose graph can be changed without touching `model`
    (tensors are shared, not copied: they are never mutated here)."""
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    if isinstance(model, ir.Model):
        return model.clone() if copy else model
    raise TypeError(f"Expected an onnx.ModelProto or onnx_ir.Model, got {type(model).__name__}.")


def like(original: T, result: ir.Model) -> T:
    """`result` as the same kind as `original`."""
    return ir.serde.serialize_model(result) if isinstance(original, onnx.ModelProto) else result


def main_values(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every named value of the main graph: inputs, initializers and node outputs."""
    values: dict[str, ir.Value] = {}
    for value in graph.inputs:
        values[value.name] = value
    for name, value in graph.initializers.items():
        values[name] = value
    for node in graph:
        for value in node.outputs:
            if value.name:
                values[value.name] = value
    return values


def producers(graph: ir.Graph) -> Callable[[str], ir.Node | None]:
    values = main_values(graph)
    return lambda name: values[name].producer() if name in values else None
