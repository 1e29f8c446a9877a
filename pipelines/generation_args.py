"""`generate()`'s arguments, checked once before any compute: transformers' precedence
(kwargs > `generation_config` > the model's generation_config.json), the modes this runtime runs,
lengths against the model's context, and transformers' own logits processors and stopping
criteria built for them. Every refusal is a one-line `InvalidArgumentError`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig
from transformers.generation import GenerationMode, LogitsProcessorList, StoppingCriteriaList

from optimum_onnx23.errors import InvalidArgumentError

from .generation import fast_processors
from .io_spec import DecoderIO
from .limits import check_context
from .transformers_adapter import TransformersLogic

__all__ = ["GenerationPlan", "prepare_generation", "one_line"]

SUPPORTED_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE, GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE)


def one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class GenerationPlan:
    """What the decoding loop needs: the resolved config, the prompts (`prompt_ids`, once per row)
    and their expansion to beams / return sequences (`input_ids`), processors and criteria."""

    gc: GenerationConfig
    logic: TransformersLogic
    prompt_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    input_ids: torch.LongTensor
    expand_size: int
    processors: LogitsProcessorList
    criteria: StoppingCriteriaList


def _check_values(values: dict[str, Any]) -> None:
    """Values transformers accepts silently or reports in several lines (kwargs before merging,
    the merged config after: the same checks, one place)."""
    max_new = values.get("max_new_tokens")
    if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int) or max_new <= 0):
        raise InvalidArgumentError(f"max_new_tokens must be a positive integer, got {max_new!r}.")
    num_beams = values.get("num_beams")
    if num_beams is not None and (not isinstance(num_beams, int) or num_beams < 1):
        raise InvalidArgumentError(f"num_beams must be an integer >= 1, got {num_beams!r}.")
    top_p = values.get("top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InvalidArgumentError(f"top_p must be in (0, 1], got {top_p}.")
    sampling = bool(values.get("do_sample"))  # kwargs alone don't say; the merged config does
    top_k = values.get("top_k")
    if sampling and top_k is not None and top_k < 0:
        raise InvalidArgumentError(f"top_k must be >= 0, got {top_k}.")
    temperature = values.get("temperature")
    if sampling and temperature is not None and not temperature > 0:
        raise InvalidArgumentError(f"temperature must be > 0 when sampling, got {temperature}.")


def _as_ids(value, name: str) -> torch.LongTensor:
    return torch.as_tensor(np.asarray(value) if isinstance(value, list) else value, dtype=torch.long)


def prepare_generation(
    config,
    model_generation_config: GenerationConfig,
    io: DecoderIO,
    input_ids,
    attention_mask,
    generation_config: GenerationConfig | None,
    logits_processor: LogitsProcessorList | None,
    stopping_criteria: StoppingCriteriaList | None,
    streamer,
    tokenizer,
    kwargs: dict[str, Any],
) -> GenerationPlan:
    """Everything `ORTModelForCausalLM.generate` checks and builds before its first step."""
    if input_ids is None:
        input_ids = kwargs.pop("inputs", None)
    if input_ids is None:
        raise InvalidArgumentError("generate() needs input_ids: tokenize the prompt first (e.g. tokenizer(text, return_tensors='pt')).")
    input_ids = _as_ids(input_ids, "input_ids")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise InvalidArgumentError(
            f"input_ids must be a non-empty [batch, length] tensor, got shape {tuple(input_ids.shape)}: the prompt is empty."
        )
    logic = TransformersLogic(config, model_generation_config)

    def unset(name: str) -> bool:
        return (
            kwargs.get(name) is None
            and (generation_config is None or getattr(generation_config, name) is None)
            and getattr(model_generation_config, name) is None
        )

    has_default_max_length, has_default_min_length = unset("max_length"), unset("min_length")
    _check_values(kwargs)
    try:
        gc, model_kwargs = logic.prepare_generation_config(copy.deepcopy(generation_config), **kwargs)
    except ValueError as error:
        raise InvalidArgumentError(f"Invalid generation arguments: {one_line(error)}") from None
    model_kwargs.pop("use_cache", None)
    if model_kwargs:
        raise InvalidArgumentError(f"Unknown generate() argument(s): {', '.join(sorted(model_kwargs))}; pass GenerationConfig fields only.")
    _check_values(gc.to_dict())
    mode = gc.get_generation_mode()
    if mode not in SUPPORTED_MODES:
        raise InvalidArgumentError(
            f"Generation mode `{mode.value}` is not supported by the onnxruntime runtime; use greedy, sampling or beam search."
        )
    if streamer is not None and gc.num_beams > 1:
        raise InvalidArgumentError("`streamer` cannot be used with beam search; pass num_beams=1 to stream.")
    if gc.stop_strings is not None and tokenizer is None:
        raise InvalidArgumentError("stop_strings needs the tokenizer: pass tokenizer=... to generate().")

    batch_size = input_ids.shape[0]
    logic.prepare_special_tokens(gc, attention_mask is not None, device=torch.device("cpu"), batch_size=batch_size)
    if attention_mask is None:
        attention_mask = logic.prepare_attention_mask_for_generation(input_ids, gc, {})
    attention_mask = _as_ids(attention_mask, "attention_mask")
    if attention_mask.shape != input_ids.shape:
        raise InvalidArgumentError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}; they must match.")
    if batch_size > 1 and bool((attention_mask[:, -1] == 0).any()):
        raise InvalidArgumentError("Right padding detected: tokenize batches with padding_side='left' for decoder-only generation.")

    expand_size = max(gc.num_beams, gc.num_return_sequences)
    prompt_ids = input_ids
    input_ids = input_ids.repeat_interleave(expand_size, dim=0)
    length = input_ids.shape[1]
    try:
        gc = logic.prepare_generated_length(
            generation_config=gc,
            has_default_max_length=has_default_max_length,
            has_default_min_length=has_default_min_length,
            model_input_name="input_ids",
            inputs_tensor=input_ids,
            input_ids_length=length,
        )
        logic.validate_generated_length(gc, length, has_default_max_length)
    except ValueError as error:
        raise InvalidArgumentError(f"Invalid generation length: {one_line(error)}") from None
    check_context(config, io, gc.max_length, f"The prompt ({length} tokens) plus {gc.max_length - length} new tokens")
    try:
        processors = fast_processors(logic.get_logits_processor(
            generation_config=gc,
            input_ids_seq_length=length,
            encoder_input_ids=input_ids,
            logits_processor=logits_processor if logits_processor is not None else LogitsProcessorList(),
            device=torch.device("cpu"),
            model_kwargs={"attention_mask": attention_mask.repeat_interleave(expand_size, dim=0)},
        ))
        criteria = logic.get_stopping_criteria(
            generation_config=gc,
            stopping_criteria=stopping_criteria if stopping_criteria is not None else StoppingCriteriaList(),
            tokenizer=tokenizer,
        )
    except ValueError as error:
        raise InvalidArgumentError(f"Invalid generation arguments: {one_line(error)}") from None
    return GenerationPlan(gc, logic, prompt_ids, attention_mask, input_ids, expand_size, processors, criteria)
