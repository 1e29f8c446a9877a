"""The family tables and their registry: which `model_type`s export, and how.

A family is a data entry (`schema.py`): dense decoders in `dense.py`, Mixture-of-Experts in
`moe.py`, hybrid (conv / state-space / linear-attention) decoders in `hybrid.py`, and the model
types refused with a reason in `unsupported.py`. This registry imports those tables and nothing
else of the exporter; nothing it imports imports it back.
"""

from __future__ import annotations

import difflib

from ...errors import UnsupportedArchitectureError
from .dense import DENSE
from .hybrid import HYBRID, HYBRID_MODEL_TYPES
from .moe import MOE
from .schema import TASKS, DecoderExportConfig, HybridExportConfig, MoeExportConfig
from .unsupported import NOT_SUPPORTED

__all__ = [
    "EXPORT_CONFIGS",
    "HYBRID_MODEL_TYPES",
    "TASKS",
    "DecoderExportConfig",
    "HybridExportConfig",
    "MoeExportConfig",
    "get_export_config",
    "nearest_supported",
    "register_export_config",
]

EXPORT_CONFIGS: dict[str, DecoderExportConfig] = {}


def register_export_config(entry: DecoderExportConfig) -> DecoderExportConfig:
    """Add (or replace) the entry of `entry.model_type`; for entries outside the tables (plugins, tests)."""
    EXPORT_CONFIGS[entry.model_type] = entry
    return entry


for _entry in (*DENSE, *MOE, *HYBRID):
    register_export_config(_entry)


def nearest_supported(model_type: str) -> str:
    """The supported model type closest to `model_type` by architecture (families.unsupported),
    else by name (Hub repositories' own model types, e.g. under --trust-remote-code)."""
    if model_type in NOT_SUPPORTED and NOT_SUPPORTED[model_type][0] in EXPORT_CONFIGS:
        return NOT_SUPPORTED[model_type][0]
    close = difflib.get_close_matches(model_type, sorted(EXPORT_CONFIGS), n=1, cutoff=0.0)
    return close[0] if close else "llama"


def get_export_config(model_type: str) -> DecoderExportConfig:
    try:
        return EXPORT_CONFIGS[model_type]
    except KeyError:
        reason = f": {NOT_SUPPORTED[model_type][1]}" if model_type in NOT_SUPPORTED else ""
        raise UnsupportedArchitectureError(
            f"Architecture `{model_type}` is not supported by the dynamo ONNX exporter{reason}. The nearest supported "
            f"one is `{nearest_supported(model_type)}`; all: {', '.join(sorted(EXPORT_CONFIGS))}."
        ) from None
