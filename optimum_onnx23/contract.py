"""What the exporter writes and the runtime, variants and publishers read: one place for the names
both sides depend on. Importing this module imports nothing else of the package.

Graph I/O follows optimum-onnx and transformers.js: `input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key|value` -> `present.{i}.key|value` (attention layers), and the fixed-size
states of hybrid decoders `past_conv.{i}` -> `present_conv.{i}`, `past_ssm.{i}` -> `present_ssm.{i}`,
`past_recurrent.{i}` -> `present_recurrent.{i}`.
"""

from __future__ import annotations

import re

__all__ = [
    "INPUT_IDS",
    "ATTENTION_MASK",
    "POSITION_IDS",
    "LOGITS",
    "WRITE_INDICES",
    "CACHE_NAMES",
    "PAST_KV_PATTERN",
    "PAST_STATE_PATTERN",
    "past_name",
    "present_name",
    "INPLACE_STATES_KEY",
    "CACHE_KEY",
    "LOGITS_KEY",
    "MAX_CACHE_LEN_KEY",
    "VARIANT_DOMAIN",
    "VARIANTS_INDEX_KEY",
    "SELECTED_VARIANT_KEY",
    "EXPORT_REPORT_FILE",
]

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
# Static-cache exports only: per-row positions at which the step's keys and values are written.
WRITE_INDICES = "write_indices"

# cache kind -> (past input template, present output template); `{i}` is the layer index.
CACHE_NAMES: dict[str, tuple[str, str]] = {
    "key": ("past_key_values.{i}.key", "present.{i}.key"),
    "value": ("past_key_values.{i}.value", "present.{i}.value"),
    "conv": ("past_conv.{i}", "present_conv.{i}"),
    "ssm": ("past_ssm.{i}", "present_ssm.{i}"),
    "recurrent": ("past_recurrent.{i}", "present_recurrent.{i}"),
}
PAST_KV_PATTERN = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
PAST_STATE_PATTERN = re.compile(r"^past_(conv|ssm|recurrent)\.(\d+)$")


def past_name(kind: str, layer: int) -> str:
    return CACHE_NAMES[kind][0].format(i=layer)


def present_name(kind: str, layer: int) -> str:
    return CACHE_NAMES[kind][1].format(i=layer)


# ONNX model metadata written by the exporter.
# Comma-separated state inputs the graph reads entirely before it writes the matching present, so
# the runtime may bind one buffer as both.
INPLACE_STATES_KEY = "optimum_onnx23.inplace_states"
CACHE_KEY = "optimum_onnx23.cache"  # "static" or "dynamic"
LOGITS_KEY = "optimum_onnx23.logits"  # "all" or "last"
MAX_CACHE_LEN_KEY = "optimum_onnx23.max_cache_len"

# Backend variants (RFC onnx/onnx#7301 shape): model-local functions in this domain.
VARIANT_DOMAIN = "pkg.optimum_onnx23.variant"
VARIANTS_INDEX_KEY = "optimum_onnx23.variants"  # model metadata: JSON list of variant names
SELECTED_VARIANT_KEY = "optimum_onnx23.selected_variant"  # metadata of a selected (plain) model

EXPORT_REPORT_FILE = "export_report.json"
