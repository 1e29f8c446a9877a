"""`onnx/manifest.json`: the repo's `onnx/` folder as an onnxruntime model package (onnxruntime#27786).

A model package maps each execution provider to the graph it should run: one component
(`decoder`) whose variants each name an `ep` and, in `executor_info["ort"]["model_file"]`, a file
of their `variant_directory`. onnxruntime (>= 1.32: `onnxruntime.ModelPackageContext`,
`select_component`) keeps the variants whose `ep` is the session's first provider and, at equal
score (the CPU provider scores every variant alike), takes the first declared. So per provider the
variants are declared in our own selection order: the backend variants listing it, highest
`variant.priority` first (what our sessions pick), then the main graph. A variant without `ep`
matches no provider in onnxruntime 1.32 (measured), so the main graph is declared once per
provider it is meant for.

The package root is `onnx/` (every variant's directory is `.`): the graphs already live there and a
portable package may not point outside its root. The repo root stays onnxruntime-genai's folder:
builds of onnxruntime-genai with model-package support probe the folder they are given for a
`manifest.json` and expect their own package layout there (0.18, installed here, ignores one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MANIFEST_NAME", "COMPONENT", "MAIN_GRAPH_PROVIDERS", "PackageEntry", "make_manifest"]

MANIFEST_NAME = "manifest.json"
COMPONENT = "decoder"
SCHEMA_VERSION = "1.0"
# Providers the standard-op main graph is declared for: the general-purpose ones that run opset-23
# Attention/RMSNormalization/RotaryEmbedding (a provider missing here gets no variant: the package
# names no fallback, so its session creation fails instead of running a graph it was not given).
MAIN_GRAPH_PROVIDERS = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "WebGpuExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
)


@dataclass(frozen=True)
class PackageEntry:
    """A graph of `onnx/` and the providers it is meant for (a variant's `variant.providers`)."""

    file_name: str
    precision: str
    providers: tuple[str, ...]
    priority: int
    variant: str | None = None  # the backend variant it materializes; None for the main graph


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()


def make_manifest(main: PackageEntry, variants: Sequence[PackageEntry], name: str, version: str) -> dict[str, Any]:
    """The manifest: for each provider a variant listing it names (in first-seen order), then each of
    `MAIN_GRAPH_PROVIDERS`, that provider's backend variants by descending priority, then the main
    graph. Variant names are `<provider>-<precision>` (`cpu-int4`)."""
    providers = list(dict.fromkeys([p for v in variants for p in v.providers] + list(MAIN_GRAPH_PROVIDERS)))
    entries: dict[str, Any] = {}
    for provider in providers:
        mine = sorted((v for v in variants if provider in v.providers), key=lambda v: -v.priority)
        for entry in [*mine, main]:
            metadata = {"precision": entry.precision, "optimum_onnx23.variant": entry.variant or "main"}
            entries[f"{_short(provider)}-{entry.precision}"] = {
                "variant_directory": ".",
                "ep": provider,
                "executor_info": {"ort": {"model_file": entry.file_name}},
                "additional_metadata": metadata,
            }
    return {
        "schema_version": SCHEMA_VERSION,
        "package_name": name,
        "package_version": version,
        "description": "Per-execution-provider graphs of this repo (onnxruntime model package).",
        "components": {COMPONENT: {"component_name": COMPONENT, "variants": entries}},
    }
