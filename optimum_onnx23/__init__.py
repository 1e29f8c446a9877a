"""optimum-onnx23: dynamo ONNX export (opset 23, standard fused ops) and onnxruntime generation
for transformers-5 decoder LLMs, as an extension of Hugging Face Optimum.

Heavy imports (torch, transformers, onnxruntime) happen on first use of an attribute, so that
`optimum-cli --help` and `import optimum_onnx23` stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "export": "optimum_onnx23.exporters",
    "ExportReport": "optimum_onnx23.exporters",
    "attach_variant": "optimum_onnx23.variants",
    "list_variants": "optimum_onnx23.variants",
    "select_variant": "optimum_onnx23.variants",
    "strip_variants": "optimum_onnx23.variants",
    "save_pretrained": "optimum_onnx23.publish",
    "push_to_hub": "optimum_onnx23.publish",
    "ORTModelForCausalLM": "optimum_onnx23.pipelines",
    "pipeline": "optimum_onnx23.pipelines",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optimum_onnx23' has no attribute {name!r}")
