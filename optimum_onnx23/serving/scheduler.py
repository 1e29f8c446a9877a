"""Continuous batching as pure logic: which requests wait, which prefill, which decode, and what
each engine step does. No onnxruntime, no tokenizer, no clock: the engine feeds it events and runs
the plan it returns, so every admission and eviction rule is testable on its own.

Rules (vLLM's and llama-server's, reduced to one CPU session):
- First come, first served; a request waits in a bounded queue (`max_queue`, then `QueueFull`).
- At most `max_num_seqs` rows hold a cache: decoding rows plus the one being prefilled.
- One prefill at a time, in chunks of at most `prefill_chunk` tokens per step, so the decoding
  rows get a step between chunks (a long prompt never stalls them for its whole length).
- With `max_num_batched_tokens` (vLLM's name), a step's tokens are bounded while rows decode:
  each decoding row takes one, the prefill chunk what is left (at least `MIN_PREFILL_CHUNK`, so
  a prompt always advances). On a CPU a step's time grows with its tokens, so this bounds the
  inter-token latency that a newcomer's prefill adds to the running rows, at the cost of its own
  time to first token.
- A cancelled request leaves at the next step, wherever it is (queue, prefill, decode).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["Phase", "Slot", "StepPlan", "Scheduler", "QueueFull", "Draining", "MIN_PREFILL_CHUNK"]

MIN_PREFILL_CHUNK = 8


class QueueFull(Exception):
    """The waiting queue holds `max_queue` requests already (HTTP 429)."""


class Draining(Exception):
    """The server is shutting down and admits nothing new (HTTP 503)."""


class Phase(str, Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    DONE = "done"


@dataclass(eq=False)
class Slot:
    """One request as the scheduler sees it: its id, prompt length and progress."""

    request_id: str
    prompt_length: int
    phase: Phase = Phase.WAITING
    prefilled: int = 0  # prompt tokens already through the model
    cancelled: bool = False

    @property
    def prefill_left(self) -> int:
        return self.prompt_length - self.prefilled


@dataclass
class StepPlan:
    """What one engine step runs: drop `evict`, run `prefill` (a slot and the [start, end) of its
    prompt), then one decode token for every slot of `decode` (in the batch's row order)."""

    evict: list[Slot] = field(default_factory=list)
    prefill: tuple[Slot, int, int] | None = None
    decode: list[Slot] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return not self.evict and self.prefill is None and not self.decode


class Scheduler:
    def __init__(
        self, max_num_seqs: int = 16, max_queue: int = 64, prefill_chunk: int = 256, max_num_batched_tokens: int | None = None
    ) -> None:
        if max_num_seqs < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ValueError("max_num_seqs and prefill_chunk must be >= 1, max_queue >= 0")
        if max_num_batched_tokens is not None and max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        self.max_num_seqs = max_num_seqs
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Slot] = deque()
        self.prefilling: Slot | None = None
        self.decoding: list[Slot] = []  # the batch's rows, in order
        self.draining = False
        self._by_id: dict[str, Slot] = {}

    # ---- events ------------------------------------------------------------------------------
    def add(self, request_id: str, prompt_length: int) -> Slot:
        if self.draining:
            raise Draining("the server is shutting down")
        if request_id in self._by_id:
            raise ValueError(f"request {request_id} is already scheduled")
        if prompt_length < 1:
            raise ValueError("a prompt has at least one token")
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests are waiting (--max-queue {self.max_queue})")
        slot = Slot(request_id, prompt_length)
        self.waiting.append(slot)
        self._by_id[request_id] = slot
        return slot

    def cancel(self, request_id: str) -> bool:
        """Mark the request cancelled; it leaves at the next `plan()`. False if unknown or done."""
        slot = self._by_id.get(request_id)
        if slot is None or slot.phase is Phase.DONE:
            return False
        slot.cancelled = True
        return True

    def finish(self, request_id: str) -> None:
        """The engine finished the request (stop, length): it leaves at the next `plan()`."""
        slot = self._by_id.get(request_id)
        if slot is not None:
            slot.phase = Phase.DONE

    def prefilled(self, slot: Slot, tokens: int) -> None:
        """The engine ran `tokens` more prompt tokens of `slot`; a fully prefilled slot joins the
        decoding rows (at the end of the batch)."""
        slot.prefilled += tokens
        if slot.prefilled >= slot.prompt_length and slot is self.prefilling:
            self.prefilling = None
            if slot.phase is Phase.PREFILL:
                slot.phase = Phase.DECODE
                self.decoding.append(slot)

    # ---- the plan ----------------------------------------------------------------------------
    def plan(self) -> StepPlan:
        plan = StepPlan()
        for slot in list(self.waiting):
            if slot.cancelled:
                self.waiting.remove(slot)
                self._forget(slot)
                plan.evict.append(slot)
        if self.prefilling is not None and (self.prefilling.cancelled or self.prefilling.phase is Phase.DONE):
            plan.evict.append(self.prefilling)
            self._forget(self.prefilling)
            self.prefilling = None
        leaving = [s for s in self.decoding if s.cancelled or s.phase is Phase.DONE]
        for slot in leaving:
            self.decoding.remove(slot)
            self._forget(slot)
        plan.evict += leaving
        if self.prefilling is None and self.waiting and len(self.decoding) < self.max_num_seqs:
            self.prefilling = self.waiting.popleft()
            self.prefilling.phase = Phase.PREFILL
        if self.prefilling is not None:
            start = self.prefilling.prefilled
            plan.prefill = (self.prefilling, start, min(start + self.chunk_size(), self.prefilling.prompt_length))
        plan.decode = list(self.decoding)
        return plan

    def chunk_size(self) -> int:
        """Prompt tokens the next prefill chunk may take (see the module docstring)."""
        if self.max_num_batched_tokens is None or not self.decoding:
            return self.prefill_chunk
        return max(MIN_PREFILL_CHUNK, min(self.prefill_chunk, self.max_num_batched_tokens - len(self.decoding)))

    def _forget(self, slot: Slot) -> None:
        slot.phase = Phase.DONE
        self._by_id.pop(slot.request_id, None)

    # ---- what the metrics read -------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.decoding) + (self.prefilling is not None)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)
