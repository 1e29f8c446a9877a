"""What a built-in producer returns: everything `attach_variant` needs."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

__all__ = ["VariantSpec"]


@dataclass
class VariantSpec:
    name: str
    body: ir.Graph
    providers: list[str]
    opset_imports: dict[str, int]
    owned: dict[str, ir.TensorProtocol] = field(default_factory=dict)
    helpers: list[ir.Function] = field(default_factory=list)
    priority: int = 0
    description: str = ""
    tolerance: str = ""
    report: dict = field(default_factory=dict)  # what the producer chose and measured (attach report, export report)

    @classmethod
    def ort_cpu(cls, model: ir.Model, **fields) -> "VariantSpec":
        """A variant for onnxruntime's CPU provider: the main graph's opset plus `com.microsoft`."""
        return cls(
            providers=["CPUExecutionProvider"], opset_imports={"": model.opset_imports.get("", 23), "com.microsoft": 1}, **fields
        )

    def attach_to(self, model: ir.Model) -> ir.Model:
        from ..attach import attach_variant

        return attach_variant(
            model, self.name, self.body, self.providers, opset_imports=self.opset_imports, owned=self.owned,
            helpers=self.helpers, priority=self.priority, description=self.description, tolerance=self.tolerance,
        )
