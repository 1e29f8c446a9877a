"""Per-row token choice: each request of a batch has its own parameters and its own seeded
generator. The processors are transformers' own, applied in `generate()`'s order (repetition
penalty, minimum length, then temperature, top-k, top-p), so a greedy row picks what `generate()`
picks for the same logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.generation import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

__all__ = ["SamplingParams", "RowSampler"]


@dataclass
class SamplingParams:
    """OpenAI's fields and vLLM's extras, validated by the HTTP layer. `temperature == 0` is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    seed: int | None = None
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class RowSampler:
    """Chooses one row's next token from its last-position logits."""

    def __init__(self, params: SamplingParams, eos_token_ids: list[int]):
        self.params = params
        self.eos = torch.tensor([i for i in eos_token_ids if i is not None and i >= 0], dtype=torch.long)
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        self.penalty = RepetitionPenaltyLogitsProcessor(params.repetition_penalty) if params.repetition_penalty != 1.0 else None
        warpers = LogitsProcessorList()
        if not params.greedy:
            if params.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
        self.warpers = warpers

    @property
    def needs_sequence(self) -> bool:
        """Whether `__call__` reads the ids so far (the repetition penalty does; the warpers do not)."""
        return self.penalty is not None

    def __call__(self, logits: torch.Tensor, sequence: torch.LongTensor | None, generated: int) -> int:
        """`logits` [vocab] float32; `sequence` [1, length] prompt + generated ids (None unless
        `needs_sequence`)."""
        scores = logits[None]
        if self.penalty is not None:
            scores = self.penalty(sequence, scores)
        if self.eos.numel() and (generated < self.params.min_tokens or self.params.ignore_eos):
            scores = scores.clone()
            scores[:, self.eos] = -float("inf")
        if self.params.greedy:
            return int(torch.argmax(scores, dim=-1))
        for warper in self.warpers:
            scores = warper(sequence, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))
