"""Prometheus metrics, named as vLLM's (`vllm:` -> `onnx23_`): running and waiting requests,
time to first token and inter-token latency histograms, prompt and generation token counters.
Each app has its own registry, so several apps (tests, Ray replicas) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        running = Gauge("onnx23_num_requests_running", "Requests holding a batch row (prefilling or decoding).", registry=self.registry)
        waiting = Gauge("onnx23_num_requests_waiting", "Requests queued for a batch row.", registry=self.registry)
        # Read at each scrape; 0 until `attach` (the model is still loading).
        running.set_function(lambda: getattr(self._engine, "num_running", 0))
        waiting.set_function(lambda: getattr(self._engine, "num_waiting", 0))
        self.ttft = Histogram("onnx23_time_to_first_token_seconds", "Arrival to first token.", buckets=_TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("onnx23_inter_token_latency_seconds", "Time between two tokens of a request.", buckets=_ITL_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("onnx23_prompt_tokens", "Prompt tokens prefilled.", registry=self.registry)
        self.generation_tokens = Counter("onnx23_generation_tokens", "Tokens generated.", registry=self.registry)
        self.requests = Counter("onnx23_requests", "Requests admitted.", registry=self.registry)
        self.finished = Counter("onnx23_request_finished", "Requests finished, by reason.", ["finished_reason"], registry=self.registry)
        self._engine = None
        self._counted = (0, 0)  # the engine's token totals already added to the counters

    def attach(self, engine) -> None:
        stats = engine.stats
        stats.on_first_token.append(self.ttft.observe)
        stats.on_next_token.append(self.itl.observe)
        stats.on_finish.append(lambda reason: self.finished.labels(finished_reason=reason).inc())
        self._engine = engine

    def render(self) -> bytes:
        engine = self._engine
        if engine is not None:  # counters follow the engine's totals (read, not written, by the engine thread)
            prompt, generation = engine.stats.prompt_tokens, engine.stats.generation_tokens
            self.prompt_tokens.inc(prompt - self._counted[0])
            self.generation_tokens.inc(generation - self._counted[1])
            self._counted = (prompt, generation)
        return generate_latest(self.registry)
