"""Backend variants in one ONNX file: attach, list, select at session creation, strip.

The format (docs/variants.md) follows ONNX RFC onnx/onnx#7301 with today's proto: each variant is a
model-local function in a private domain whose inputs and outputs are named after the main-graph
values it consumes and replaces; weights stay main-graph initializers and are passed in.
"""

from .attach import attach_variant
from .format import FORMAT_VERSION, SELECTED_KEY, VARIANT_DOMAIN, VariantInfo
from .listing import list_variants
from .providers import choose_variant
from .select import MAIN, select_variant
from .strip import strip_variants

__all__ = [
    "FORMAT_VERSION",
    "MAIN",
    "SELECTED_KEY",
    "VARIANT_DOMAIN",
    "VariantInfo",
    "attach_builtin_variants",
    "attach_variant",
    "choose_variant",
    "list_variants",
    "select_for_providers",
    "select_variant",
    "strip_variants",
]


def __getattr__(name: str):
    # The folder and runtime helpers import onnxruntime's quantizer; load them on first use.
    if name == "attach_builtin_variants":
        from .builtin import attach_builtin_variants

        return attach_builtin_variants
    if name == "select_for_providers":
        from .runtime import select_for_providers

        return select_for_providers
    raise AttributeError(f"module 'optimum_onnx23.variants' has no attribute {name!r}")
