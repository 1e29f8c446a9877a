"""The one module that reaches into transformers' private generation helpers.

`generate()` must choose exactly what `transformers.generate()` chooses, and transformers exposes
the pieces that decide it (config precedence, special tokens, generated lengths, logits processors,
stopping criteria, the vectorized beam search's bookkeeping) only as private `GenerationMixin`
methods; there is no public API for them. They are bound here under public names, on a stand-in
model, so the rest of the runtime calls only this adapter, and `pyproject.toml` bounds transformers
below the next major release, where these helpers may move.
"""

from __future__ import annotations

import inspect

import torch
from transformers import GenerationConfig, GenerationMixin, PreTrainedConfig

__all__ = ["TransformersLogic", "pad_token_tensor", "eos_token_tensor"]


class TransformersLogic(GenerationMixin):
    """Just enough of a model for GenerationMixin's config, processor and beam helpers to run."""

    def __init__(self, config: PreTrainedConfig, generation_config: GenerationConfig):
        self.config = config
        self.generation_config = generation_config
        self.device = torch.device("cpu")

    prepare_generation_config = GenerationMixin._prepare_generation_config
    prepare_special_tokens = GenerationMixin._prepare_special_tokens
    prepare_attention_mask_for_generation = GenerationMixin._prepare_attention_mask_for_generation
    prepare_generated_length = GenerationMixin._prepare_generated_length
    validate_generated_length = GenerationMixin._validate_generated_length
    get_logits_processor = GenerationMixin._get_logits_processor
    get_stopping_criteria = GenerationMixin._get_stopping_criteria
    # beam search (transformers' vectorized `_beam_search`); getattr_static keeps staticmethods static
    flatten_beam_dim = inspect.getattr_static(GenerationMixin, "_flatten_beam_dim")
    unflatten_beam_dim = inspect.getattr_static(GenerationMixin, "_unflatten_beam_dim")
    get_top_k_continuations = GenerationMixin._get_top_k_continuations
    get_running_beams_for_next_iteration = GenerationMixin._get_running_beams_for_next_iteration
    update_finished_beams = GenerationMixin._update_finished_beams
    check_early_stop_heuristic = inspect.getattr_static(GenerationMixin, "_check_early_stop_heuristic")
    beam_search_has_unfinished_sequences = inspect.getattr_static(GenerationMixin, "_beam_search_has_unfinished_sequences")


def pad_token_tensor(generation_config: GenerationConfig) -> torch.Tensor | None:
    """The pad id as `prepare_special_tokens` stored it."""
    return generation_config._pad_token_tensor


def eos_token_tensor(generation_config: GenerationConfig) -> torch.Tensor | None:
    return generation_config._eos_token_tensor
