"""`pipeline("text-generation", model=..., accelerator="ort")`: transformers' text-generation
pipeline (same call signature, inputs and outputs) driving an `ORTModelForCausalLM`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import onnxruntime as ort
from transformers import AutoTokenizer, TextGenerationPipeline

from optimum_onnx23.errors import InvalidArgumentError

from .modeling import ORTModelForCausalLM

__all__ = ["ORTTextGenerationPipeline", "pipeline", "SUPPORTED_TASKS"]

SUPPORTED_TASKS = ("text-generation",)


class ORTTextGenerationPipeline(TextGenerationPipeline):
    """transformers' `TextGenerationPipeline`; the model is an onnxruntime decoder."""

    def check_model_type(self, supported_models) -> None:
        # transformers checks against its torch classes; an ORTModelForCausalLM is a causal LM by construction.
        return None


def pipeline(
    task: str = "text-generation",
    model: str | os.PathLike | ORTModelForCausalLM | None = None,
    tokenizer: Any = None,
    accelerator: str = "ort",
    provider: str = "CPUExecutionProvider",
    session_options: ort.SessionOptions | None = None,
    providers: Sequence[str] | None = None,
    provider_options: Sequence[dict[str, Any]] | dict[str, Any] | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    subfolder: str = "",
    file_name: str | None = None,
    pipeline_class: type[ORTTextGenerationPipeline] | None = None,
    **kwargs: Any,
) -> ORTTextGenerationPipeline:
    """Build a text-generation pipeline on onnxruntime.

    `model` is an exported folder, a Hub id or an `ORTModelForCausalLM`; the tokenizer defaults to
    the one saved beside the model. Extra `kwargs` go to the pipeline as in transformers
    (e.g. `batch_size`, or default generation arguments such as `max_new_tokens`); `pipeline_class`
    replaces `ORTTextGenerationPipeline` (a subclass of it, as transformers' `pipeline_class`).
    `provider`, `providers`, `provider_options` and `session_options` go to
    `ORTModelForCausalLM.from_pretrained` (e.g. `provider="OpenVINOExecutionProvider",
    provider_options={"device_type": "CPU", "precision": "FP32", "cache_dir": ...}`)."""
    if accelerator != "ort":
        # optimum's own message for accelerators it does not know; `ov` is optimum-intel's, not ours.
        if accelerator == "ov":
            raise InvalidArgumentError(
                "accelerator='ov' is OpenVINO (optimum-intel); optimum-onnx23 runs onnxruntime: pass accelerator='ort'."
            )
        raise InvalidArgumentError(f"Accelerator {accelerator} not recognized. Please use 'ort' or 'ov'.")
    if task not in SUPPORTED_TASKS:
        raise InvalidArgumentError(f"Task `{task}` is not supported by optimum-onnx23's pipeline; use: {', '.join(SUPPORTED_TASKS)}.")
    if model is None:
        raise InvalidArgumentError("pipeline() needs model=: an exported folder, a Hub id or an ORTModelForCausalLM.")
    if not isinstance(model, ORTModelForCausalLM):
        model = ORTModelForCausalLM.from_pretrained(
            model,
            provider=provider,
            providers=providers,
            provider_options=provider_options,
            session_options=session_options,
            revision=revision,
            cache_dir=cache_dir,
            subfolder=subfolder,
            file_name=file_name,
            local_files_only=local_files_only,
            token=token,
        )
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        source = tokenizer if tokenizer is not None else getattr(model, "folder", None)
        if source is None:
            raise InvalidArgumentError("No tokenizer: pass tokenizer= (a tokenizer or the folder holding one).")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise InvalidArgumentError(
                f"Could not load a tokenizer from {source} ({type(error).__name__}); pass tokenizer= explicitly."
            ) from None
    # Decoder-only batches must be left-padded; every row then shares one cache position.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        pad = model.generation_config.pad_token_id
        if pad is None:
            pad = model.generation_config.eos_token_id
            pad = pad[0] if isinstance(pad, list) else pad
        if pad is not None:
            tokenizer.pad_token_id = pad
    return (pipeline_class or ORTTextGenerationPipeline)(model=model, tokenizer=tokenizer, task=task, **kwargs)
