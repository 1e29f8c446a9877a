"""Decoding loops over a `DecoderState`: greedy / multinomial sampling and beam search.

The logits processing, stopping criteria and beam bookkeeping are transformers' own
(`GenerationMixin` helpers run on torch tensors of the last position's logits), so the choices
are those of `transformers.generate()`; only the model forward and the KV cache are ours.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import GenerationConfig
from transformers.generation import (
    LogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    StoppingCriteriaList,
)

from .state import DecoderState
from .transformers_adapter import TransformersLogic, eos_token_tensor, pad_token_tensor

__all__ = ["decode_greedy_or_sample", "decode_beam_search", "fast_processors", "single_threaded_torch"]


@contextlib.contextmanager
def single_threaded_torch():
    """Run torch on the calling thread only, restoring its thread count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _SuppressEos(LogitsProcessor):
    """transformers' MinLength / MinNewTokensLength processors, same scores: EOS at -inf while the
    sequence is shorter than `min_length`. Theirs rebuild an EOS mask over the whole vocabulary
    every step even once the length is reached (1.2 ms a token on a 49k vocabulary)."""

    def __init__(self, min_length: int, eos_token_id: torch.Tensor):
        self.min_length = min_length
        self.eos_token_id = eos_token_id[eos_token_id >= 0]  # isin ignores negative ids; indexing would not

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] >= self.min_length:
            return scores
        scores = scores.clone()
        scores[:, self.eos_token_id] = -float("inf")
        return scores


def fast_processors(processors: LogitsProcessorList) -> LogitsProcessorList:
    """`processors` with the minimum-length ones replaced by `_SuppressEos` (same results)."""
    fast = LogitsProcessorList()
    for processor in processors:
        if type(processor) is MinLengthLogitsProcessor:
            processor = _SuppressEos(processor.min_length, processor.eos_token_id)
        elif type(processor) is MinNewTokensLengthLogitsProcessor:
            processor = _SuppressEos(processor.prompt_length_to_skip + processor.min_new_tokens, processor.eos_token_id)
        fast.append(processor)
    return fast


def _apply(processors: LogitsProcessorList, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """`LogitsProcessorList.__call__` without its per-call signature inspection (no extra kwargs here)."""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def decode_greedy_or_sample(
    state: DecoderState,
    input_ids: torch.LongTensor,
    logits: torch.Tensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    streamer=None,
) -> torch.LongTensor:
    """transformers' `_sample` loop: rows that hit a stopping criterion are padded with pad_token_id."""
    pad_token_id = pad_token_tensor(generation_config)
    has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    do_sample = generation_config.do_sample
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long)
    while True:
        scores = _apply(logits_processor, input_ids, logits)
        if do_sample:
            next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        if has_eos_stopping_criteria:
            next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(next_tokens)
        unfinished = unfinished & ~stopping_criteria(input_ids, scores)
        if unfinished.max() == 0:
            break
        logits = state.step(next_tokens[:, None].numpy())
    if streamer is not None:
        streamer.end()
    return input_ids


def decode_beam_search(
    state: DecoderState,
    logic: TransformersLogic,
    input_ids: torch.LongTensor,
    logits: torch.Tensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
) -> torch.LongTensor:
    """transformers' vectorized `_beam_search`; the cache is reordered on its device each step."""
    eos_token_id = eos_token_tensor(generation_config)
    pad_token_id = pad_token_tensor(generation_config)
    do_sample = generation_config.do_sample
    early_stopping = generation_config.early_stopping
    length_penalty = generation_config.length_penalty
    max_length = generation_config.max_length
    num_beams = generation_config.num_beams
    num_return_sequences = generation_config.num_return_sequences

    batch_size_unflattened, cur_len = input_ids.shape[:2]
    batch_size = batch_size_unflattened // num_beams
    decoder_prompt_len = cur_len
    n_eos_tokens = eos_token_id.shape[0] if eos_token_id is not None else 0
    beams_to_keep = max(2, 1 + n_eos_tokens) * num_beams
    top_num_beam_mask = torch.cat(
        (torch.ones((num_beams), dtype=torch.bool), torch.zeros((beams_to_keep - num_beams), dtype=torch.bool))
    )
    output_fill_value = pad_token_id or eos_token_id[0] if eos_token_id is not None else -1
    running_sequences = torch.full((batch_size, num_beams, max_length), fill_value=output_fill_value, dtype=torch.int64)
    running_sequences[:, :, :cur_len] = logic.unflatten_beam_dim(input_ids, batch_size, num_beams)
    sequences = running_sequences.detach().clone()
    running_beam_scores = torch.zeros((batch_size, num_beams), dtype=torch.float)
    running_beam_scores[:, 1:] = -1e9
    beam_scores = torch.full((batch_size, num_beams), fill_value=-1e9, dtype=torch.float)
    is_sent_finished = torch.zeros((batch_size, num_beams), dtype=torch.bool)
    is_early_stop_heuristic_unsatisfied = torch.ones((batch_size, 1), dtype=torch.bool)
    next_token_hits_stopping_criteria = torch.zeros((batch_size, num_beams), dtype=torch.bool)
    running_beam_indices = torch.full((batch_size, num_beams, max_length - cur_len), fill_value=-1, dtype=torch.int32)
    beam_indices = running_beam_indices.detach().clone()
    flat_running_sequences = input_ids

    while True:
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
        log_probs = _apply(logits_processor, flat_running_sequences, log_probs)
        log_probs = logic.unflatten_beam_dim(log_probs, batch_size, num_beams)
        log_probs = log_probs + running_beam_scores[:, :, None]
        log_probs = torch.reshape(log_probs, (batch_size, -1))

        topk_log_probs, topk_running_sequences, topk_running_beam_indices = logic.get_top_k_continuations(
            accumulated_log_probs=log_probs,
            running_sequences=running_sequences,
            running_beam_indices=running_beam_indices,
            cur_len=cur_len,
            decoder_prompt_len=decoder_prompt_len,
            do_sample=do_sample,
            beams_to_keep=beams_to_keep,
            num_beams=num_beams,
            batch_size=batch_size,
        )
        next_token_hits_stopping_criteria = stopping_criteria(
            logic.flatten_beam_dim(topk_running_sequences[:, :, : cur_len + 1]), None
        )
        next_token_hits_stopping_criteria = logic.unflatten_beam_dim(
            next_token_hits_stopping_criteria, batch_size, beams_to_keep
        )
        running_sequences, running_beam_scores, running_beam_indices = logic.get_running_beams_for_next_iteration(
            topk_log_probs=topk_log_probs,
            topk_running_sequences=topk_running_sequences,
            topk_running_beam_indices=topk_running_beam_indices,
            next_token_hits_stopping_criteria=next_token_hits_stopping_criteria,
            num_beams=num_beams,
        )
        sequences, beam_scores, beam_indices, is_sent_finished = logic.update_finished_beams(
            sequences=sequences,
            topk_running_sequences=topk_running_sequences,
            beam_scores=beam_scores,
            topk_log_probs=topk_log_probs,
            beam_indices=beam_indices,
            topk_running_beam_indices=topk_running_beam_indices,
            is_early_stop_heuristic_unsatisfied=is_early_stop_heuristic_unsatisfied,
            is_sent_finished=is_sent_finished,
            next_token_hits_stopping_criteria=next_token_hits_stopping_criteria,
            top_num_beam_mask=top_num_beam_mask,
            num_beams=num_beams,
            cur_len=cur_len,
            decoder_prompt_len=decoder_prompt_len,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )
        beam_idx = logic.flatten_beam_dim(running_beam_indices[..., cur_len - decoder_prompt_len])
        cur_len = cur_len + 1
        is_early_stop_heuristic_unsatisfied = logic.check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=is_early_stop_heuristic_unsatisfied,
            running_beam_scores=running_beam_scores,
            beam_scores=beam_scores,
            is_sent_finished=is_sent_finished,
            cur_len=cur_len,
            max_length=max_length,
            decoder_prompt_len=decoder_prompt_len,
            early_stopping=early_stopping,
            length_penalty=length_penalty,
        )
        if not logic.beam_search_has_unfinished_sequences(
            is_early_stop_heuristic_unsatisfied, is_sent_finished, next_token_hits_stopping_criteria, early_stopping
        ):
            break
        # Reorder the cache (on its device) to the surviving beams, then feed their last tokens.
        state.reorder(beam_idx.numpy().astype(np.int64))
        flat_running_sequences = logic.flatten_beam_dim(running_sequences[:, :, :cur_len])
        logits = state.step(flat_running_sequences[:, -1:].numpy())

    sequences = logic.flatten_beam_dim(sequences[:, :num_return_sequences, :])
    beam_indices = logic.flatten_beam_dim(beam_indices[:, :num_return_sequences, :])
    max_generated_length = ((beam_indices + 1).bool()).sum(dim=1).max()
    return sequences[:, : decoder_prompt_len + max_generated_length]
