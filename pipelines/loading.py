"""`ORTModelForCausalLM.from_pretrained`'s work: find the files (an exported folder, the Hub
layout, a Hub id, or a transformers checkpoint exported on demand), read the configs, and open the
session once (`session.open_session`)."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from transformers import AutoConfig, GenerationConfig, PreTrainedConfig

from optimum_onnx23.errors import InvalidArgumentError, ModelNotFoundError
from optimum_onnx23.model_file import ModelFile

from .hub import ModelFiles, resolve_model_files
from .session import open_session

__all__ = ["LoadedModel", "load", "resolve_providers", "is_transformers_checkpoint"]

logger = logging.getLogger(__name__)


def resolve_providers(
    provider: str, providers: Sequence[str] | None, provider_options: Sequence[dict] | dict | None
) -> list[str | tuple[str, dict]]:
    """optimum-onnx's rules: `providers` wins over `provider`; options are one dict for the first
    provider or one per provider."""
    names = list(providers) if providers is not None else [provider]
    if provider_options is None:
        options = [{}] * len(names)
    elif isinstance(provider_options, dict):
        options = [provider_options] + [{}] * (len(names) - 1)
    else:
        options = list(provider_options)
        if len(options) != len(names):
            raise InvalidArgumentError(
                f"{len(options)} provider_options for {len(names)} providers; pass one dict per provider, or one dict for the first."
            )
    return [(name, dict(opts)) if opts else name for name, opts in zip(names, options)]


def is_transformers_checkpoint(model_id: str | os.PathLike, subfolder: str, file_name: str | None) -> bool:
    """A local folder with config.json and weights but no ONNX file anywhere optimum-onnx would look
    (a folder with neither weights nor ONNX gets the "no ONNX model" error, not a failed export)."""
    folder = Path(model_id).expanduser() / subfolder
    if file_name is not None or not (folder / "config.json").is_file():
        return False
    has_weights = any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin"))
    return has_weights and not any(folder.glob("*.onnx")) and not any((folder / "onnx").glob("*.onnx"))


@dataclass
class LoadedModel:
    session: ort.InferenceSession
    config: PreTrainedConfig
    generation_config: GenerationConfig
    files: ModelFiles
    variant: str | None
    model_file: ModelFile


def load(
    model_id: str | os.PathLike,
    config: PreTrainedConfig | str | os.PathLike | None,
    export: bool,
    subfolder: str,
    revision: str | None,
    force_download: bool,
    local_files_only: bool,
    trust_remote_code: bool,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
    providers: list[str | tuple[str, dict]],
    session_options: ort.SessionOptions | None,
    use_cache: bool,
    generation_config: GenerationConfig | None,
    dtype: torch.dtype | str | None,
    file_name: str | None,
) -> tuple[LoadedModel, torch.dtype | str | None]:
    """See `ORTModelForCausalLM.from_pretrained`. Returns the loaded parts and the dtype the caller
    asked for (None once an export on demand fixed it)."""
    if not export and is_transformers_checkpoint(model_id, subfolder, file_name):
        logger.warning("No ONNX model in %s: exporting the checkpoint to ONNX now (export=True); later loads reuse the export.", model_id)
        export = True
    if export:
        from .export_cache import cached_export, export_dtype

        if file_name is not None:
            logger.warning("file_name=%s is ignored: the model is exported to model.onnx (export=True).", file_name)
        folder = cached_export(
            model_id, subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token,
            local_files_only=local_files_only, force_download=force_download,
            trust_remote_code=trust_remote_code, dtype=export_dtype(dtype),
        )
        model_id, subfolder, revision, file_name, dtype = folder, "", None, None, None
    files = resolve_model_files(model_id, revision, cache_dir, subfolder, file_name, local_files_only, token, force_download=force_download)
    if not (files.folder / "config.json").is_file() and config is None:
        raise ModelNotFoundError(f"{files.folder} has no config.json next to the ONNX model; re-export the folder.")
    if isinstance(config, PreTrainedConfig):
        config = copy.deepcopy(config)
    else:  # the model's own folder (local: no network), or the config= given
        config = AutoConfig.from_pretrained(config or files.folder, trust_remote_code=trust_remote_code)
    if generation_config is not None:
        generation_config = copy.deepcopy(generation_config)
    else:
        try:
            generation_config = GenerationConfig.from_pretrained(files.folder)
        except OSError:
            generation_config = GenerationConfig.from_model_config(config)
    config.use_cache = generation_config.use_cache = use_cache
    session, model_file, variant = open_session(files.onnx_path, providers, session_options)
    return LoadedModel(session, config, generation_config, files, variant, model_file), dtype


def check_dtype(requested: torch.dtype | str, graph_numpy_dtype: Any, onnx_path: Path) -> None:
    """Loading an ONNX model, the graph fixes the dtype: refuse a different one."""
    import numpy as np

    from .export_cache import export_dtype

    graph_dtype = export_dtype(np.dtype(graph_numpy_dtype).name)
    if export_dtype(requested) != graph_dtype:
        raise InvalidArgumentError(
            f"{onnx_path} runs in {graph_dtype}, not {requested}: the export fixes the dtype; drop dtype= "
            "or export the checkpoint with export=True, dtype=..."
        )
