"""Stage 4 of the data flow: a Hub-ready ONNX repo (layout, model card, genai_config.json) pushed with huggingface_hub.

Attributes load on first use, so that the export command can add the publishing flags
(`add_publish_arguments`) without importing huggingface_hub, onnx or torch at start-up.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CardInputs": "card",
    "build_model_card": "card",
    "validate_model_card": "card",
    "add_publish_arguments": "cli",
    "check_publish_args": "cli",
    "publish_from_args": "cli",
    "GenaiPrecisionError": "errors",
    "HubRequestError": "errors",
    "InvalidRepoIdError": "errors",
    "MissingTokenError": "errors",
    "ModelCardError": "errors",
    "NoOnnxFilesError": "errors",
    "PublishError": "errors",
    "make_genai_config": "genai_config",
    "HubFile": "layout",
    "HubLayout": "layout",
    "PrecisionFile": "precisions",
    "make_manifest": "model_package",
    "check_repo_id": "repo_id",
    "plan_hub_layout": "layout",
    "save_pretrained": "layout",
    "OnnxModelFiles": "onnx_files",
    "find_onnx_models": "onnx_files",
    "describe_dry_run": "push",
    "push_to_hub": "push",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'optimum_onnx23.publish' has no attribute {name!r}")
