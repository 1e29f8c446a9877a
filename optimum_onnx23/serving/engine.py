"""The generation engine behind the server: one thread owns the onnxruntime session and runs the
scheduler's plan step after step (continuous batching); requests come from the HTTP event loop
and get their text back through asyncio queues.

Each step: drop finished and cancelled rows, run one prefill chunk of the request being admitted
(alone, batch 1), and when its prompt is through, sample its first token and let it join the
decoding rows; then one decode step for every running row, each row sampled with its own
parameters and generator. The rows' caches are a `serving.batch.RowBatch`: fixed KV slots where
the graph allows them, else the dynamic cache. onnxruntime releases the GIL while it runs, so the
event loop keeps serving HTTP meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from optimum_onnx23.pipelines.generation import single_threaded_torch
from optimum_onnx23.pipelines.limits import context_length
from optimum_onnx23.pipelines.modeling import ORTModelForCausalLM

from .batch import RowBatch, choose_rows
from .sampling import RowSampler, SamplingParams
from .scheduler import Scheduler, Slot

__all__ = ["Engine", "Delta", "EngineStats"]

logger = logging.getLogger(__name__)


@dataclass
class Delta:
    """What a request receives: new text (possibly empty), and at the end a finish reason."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class EngineStats:
    """Counters the metrics endpoint reads (and observers for its histograms)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    on_first_token: list[Callable[[float], None]] = field(default_factory=list)
    on_next_token: list[Callable[[float], None]] = field(default_factory=list)
    on_finish: list[Callable[[str], None]] = field(default_factory=list)


class _Request:
    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams, eos: list[int], emit: Callable[[Delta], None]):
        self.id = request_id
        self.prompt = prompt
        self.params = params
        self.sampler = RowSampler(params, eos)
        self.eos = set(eos)
        self.emit = emit
        self.generated: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.arrival = time.perf_counter()
        self.last_token_time: float | None = None
        self.finished = False


class Engine:
    """Continuous batching over one `ORTModelForCausalLM`. `kv_cache`: "auto" (KV slots where the
    graph allows them, else the dynamic cache, with a warning), "slots" or "dynamic"."""

    def __init__(
        self,
        model: ORTModelForCausalLM,
        tokenizer,
        max_num_seqs: int = 16,
        max_queue: int = 64,
        max_model_len: int | None = None,
        prefill_chunk: int = 256,
        kv_cache: str = "auto",
        max_num_batched_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        context, _ = context_length(model.config, model.io)
        limits = [n for n in (max_model_len, context) if n is not None]
        self.max_model_len = min(limits) if limits else None  # --max-model-len can only lower the context
        self.batch: RowBatch = choose_rows(model, kv_cache, max_num_seqs, self.max_model_len)
        kv_bytes = getattr(self.batch, "kv_bytes", None)
        if kv_bytes is not None:  # reserved, committed page by page as rows grow
            logger.info(
                "KV cache: %s, %d rows x %d positions, %.2f GB reserved", self.batch.layout, max_num_seqs,
                self.batch.max_len, kv_bytes / 1e9,
            )
        else:
            logger.info("KV cache: dynamic, up to %d rows", max_num_seqs)
        self.scheduler = Scheduler(max_num_seqs, max_queue, prefill_chunk, max_num_batched_tokens)
        eos = model.generation_config.eos_token_id
        self.eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.eos:
            self.eos.append(tokenizer.eos_token_id)
        self.stats = EngineStats()
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="onnx23-engine", daemon=True)

    # ---- from the event loop -----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, request_id: str | None = None) -> tuple[str, asyncio.Queue]:
        """Queue a request; returns its id and the asyncio queue its `Delta`s arrive on. Raises
        `QueueFull` / `Draining` at once (HTTP 429 / 503)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        request_id = request_id or f"req-{next(self._ids)}"

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        request = _Request(request_id, prompt, params, [] if params.ignore_eos else self.eos, emit)
        with self._lock:
            self.scheduler.add(request_id, len(prompt))
            self._requests[request_id] = request
        self._wake.set()
        return request_id, queue

    def cancel(self, request_id: str) -> None:
        with self._lock:
            if self.scheduler.cancel(request_id):
                logger.info("request %s cancelled", request_id)
        self._wake.set()

    def drain(self) -> None:
        """Admit nothing new; running and waiting requests finish."""
        with self._lock:
            self.scheduler.draining = True

    def shutdown(self, timeout: float | None = None) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting

    # ---- the engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        with single_threaded_torch(), torch.no_grad():
            while not self._stop:
                with self._lock:
                    plan = self.scheduler.plan()
                if plan.idle:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                try:
                    self._step(plan)
                except Exception as error:  # a failed step must not take the server down silently
                    logger.exception("engine step failed")
                    self._fail_all(f"generation failed: {type(error).__name__}: {error}")

    def _fail_all(self, message: str) -> None:
        with self._lock:
            for request in list(self._requests.values()):
                self.scheduler.cancel(request.id)
                if not request.finished:
                    request.finished = True
                    request.emit(Delta("", "abort", len(request.prompt), len(request.generated), error=message))
            self.batch.remove(set(self.batch.rows) | set(self._requests))

    def _step(self, plan) -> None:
        if plan.evict:
            self._evict(plan.evict)
        if plan.prefill is not None:
            self._prefill(*plan.prefill)
        # Every row decodes, including one that joined in this step's prefill (its first token is sampled).
        rows = list(self.batch.rows)
        if rows and any(not self._requests[i].finished for i in rows):
            logits = self.batch.decode([self._requests[i].generated[-1] for i in rows])
            for row, request_id in enumerate(rows):
                self._accept(self._requests[request_id], logits[row])

    def _evict(self, slots: list[Slot]) -> None:
        gone = {slot.request_id for slot in slots}
        for request_id in gone:
            request = self._requests.pop(request_id, None)
            if request is not None and not request.finished:  # cancelled
                request.finished = True
                request.emit(Delta("", "abort", len(request.prompt), len(request.generated)))
                for observer in self.stats.on_finish:
                    observer("abort")
        self.batch.remove(gone)

    def _prefill(self, slot: Slot, start: int, end: int) -> None:
        request = self._requests[slot.request_id]
        logits = self.batch.prefill(request.id, request.prompt[start:end])
        with self._lock:
            self.scheduler.prefilled(slot, end - start)
        if end < len(request.prompt):
            return
        self.stats.prompt_tokens += len(request.prompt)
        self.batch.admit(request.id)
        self._accept(request, logits)

    def _accept(self, request: _Request, logits: torch.Tensor) -> None:
        """Sample `request`'s next token, emit its text, and finish it if a limit is reached."""
        if request.finished:
            return
        sampler = request.sampler
        sequence = torch.tensor([request.prompt + request.generated], dtype=torch.long) if sampler.needs_sequence else None
        token = sampler(logits, sequence, len(request.generated))
        request.generated.append(token)
        self.stats.generation_tokens += 1
        now = time.perf_counter()
        if request.last_token_time is None:
            for observer in self.stats.on_first_token:
                observer(now - request.arrival)
        else:
            for observer in self.stats.on_next_token:
                observer(now - request.last_token_time)
        request.last_token_time = now
        params = request.params
        finish = None
        if token in request.eos:  # the sampler kept EOS out before min_tokens (and always with ignore_eos)
            finish = "stop"
        elif len(request.generated) >= params.max_tokens:
            finish = "length"
        elif self.max_model_len is not None and len(request.prompt) + len(request.generated) >= self.max_model_len:
            finish = "length"
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        for stop in params.stop:
            at = text.find(stop, max(0, request.sent - len(stop) + 1))
            if at != -1:
                text, finish = text[:at], "stop"
                break
        if finish is None:
            # Hold back what may still become a stop string or a multi-byte character.
            hold = max((len(s) - 1 for s in params.stop), default=0)
            ready = len(text) - hold
            while ready > request.sent and text[ready - 1] == "\ufffd":
                ready -= 1
        else:
            ready = len(text)
        delta = text[request.sent : ready] if ready > request.sent else ""
        request.sent = max(request.sent, ready)
        if finish is not None:
            request.finished = True
            with self._lock:
                self.scheduler.finish(request.id)
            request.emit(Delta(delta, finish, len(request.prompt), len(request.generated)))
            for observer in self.stats.on_finish:
                observer(finish)
        elif delta:
            request.emit(Delta(delta))
