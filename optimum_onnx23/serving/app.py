"""The OpenAI-compatible HTTP surface (FastAPI): `/v1/models`, `/v1/completions`,
`/v1/chat/completions` (server-sent events with `stream: true`), `/health`, `/metrics`.

`create_app(ServerConfig)` loads the model in the background (so `/health` answers 503 until it is
ready) and starts the engine; shutting the app down stops admitting and lets running requests end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from .engine import Delta, Engine
from .metrics import Metrics
from .protocol import CompletionRequest, OpenAIError, error_body, parse_chat, parse_completion
from .scheduler import Draining, QueueFull

__all__ = ["ServerConfig", "create_app"]

logger = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """What `optimum-cli onnx23 serve` and the Ray Serve builder take."""

    model: str
    served_model_name: str | None = None
    max_num_seqs: int = 16
    max_queue: int = 64
    max_model_len: int | None = None
    provider: str = "CPUExecutionProvider"
    prefill_chunk: int = 256
    max_num_batched_tokens: int | None = 64
    kv_cache: str = "auto"
    revision: str | None = None
    local_files_only: bool = False

    @property
    def name(self) -> str:
        return self.served_model_name or os.path.basename(os.path.normpath(str(self.model))) or str(self.model)


class _State:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.error: str | None = None
        self.ready = threading.Event()


def load_engine(config: ServerConfig) -> Engine:
    from transformers import AutoTokenizer

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(
        config.model, provider=config.provider, revision=config.revision, local_files_only=config.local_files_only
    )
    tokenizer = AutoTokenizer.from_pretrained(model.folder)
    engine = Engine(
        model, tokenizer, config.max_num_seqs, config.max_queue, config.max_model_len, config.prefill_chunk,
        kv_cache=config.kv_cache, max_num_batched_tokens=config.max_num_batched_tokens,
    )
    if engine.batch.layout == "slots":
        model.session = None  # the slot graph's session serves; the model's own would hold the weights twice
    engine.start()
    return engine


def _error(error: OpenAIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 429 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def create_app(config: ServerConfig, engine: Engine | None = None) -> FastAPI:
    """The app; `engine` (already started) skips loading, for tests and the Ray replica."""
    state = _State()
    metrics = Metrics()

    def load() -> None:
        try:
            state.engine = engine or load_engine(config)
            metrics.attach(state.engine)
            logger.info("Serving %s as `%s` (max %d rows)", config.model, config.name, config.max_num_seqs)
        except Exception as error:  # reported by /health and every route
            state.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            logger.error("Could not load %s: %s", config.model, state.error)
        finally:
            state.ready.set()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine is not None:  # nothing to load: ready before the first request (the Ray replica)
            load()
        else:
            threading.Thread(target=load, name="onnx23-load", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.drain()
            # uvicorn has waited for open requests already; whatever is left is aborted.
            state.engine.shutdown(timeout=5)

    app = FastAPI(title="optimum-onnx23", lifespan=lifespan)
    app.state.onnx23 = state

    def engine_or_error() -> Engine:
        if state.engine is None:
            if state.error is not None:
                raise OpenAIError(503, f"The model failed to load: {state.error}", type_="server_error")
            raise OpenAIError(503, "The model is still loading; retry shortly.", type_="server_error")
        return state.engine

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, error: OpenAIError):
        return _error(error)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return JSONResponse(error_body(f"No route {request.method} {request.url.path}.", code="not_found"), status_code=404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc):
        return JSONResponse(error_body(f"Method {request.method} is not allowed on {request.url.path}."), status_code=405)

    @app.get("/health")
    async def health():
        if state.engine is None:
            return JSONResponse({"status": "loading" if state.error is None else "error", "error": state.error}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        created = int(time.time())
        return {"object": "list", "data": [{"id": config.name, "object": "model", "created": created, "owned_by": "optimum-onnx23", "max_model_len": engine_or_error().max_model_len}]}

    async def read_json(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise OpenAIError(400, f"The request body is not valid JSON ({error.msg if hasattr(error, 'msg') else error}).") from None

    def check_model(parsed: CompletionRequest) -> None:
        if parsed.model not in (None, config.name):
            raise OpenAIError(404, f"The model `{parsed.model}` does not exist; this server serves `{config.name}`.", "model", code="model_not_found")

    async def serve(request: Request, chat: bool):
        engine = engine_or_error()
        body = await read_json(request)
        parse = parse_chat if chat else parse_completion
        parsed = parse(body, engine.tokenizer, engine.max_model_len)
        check_model(parsed)
        try:
            request_id, queue = engine.submit(parsed.prompt, parsed.params)
        except QueueFull as error:
            raise OpenAIError(429, f"Too many requests waiting ({error}); retry later.", type_="rate_limit_exceeded", code="rate_limit_exceeded") from None
        except Draining:
            raise OpenAIError(503, "The server is shutting down and takes no new requests.", type_="server_error") from None
        metrics.requests.inc()
        kind = "chat.completion" if chat else "text_completion"
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if parsed.stream:
            return StreamingResponse(
                _stream(engine, request, request_id, queue, parsed, kind, response_id, created, config.name, chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, last = await _collect(engine, request, request_id, queue)
        if last.error is not None:
            raise OpenAIError(500, last.error, type_="server_error")
        choice = {"index": 0, "finish_reason": last.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
            choice["logprobs"] = None
        return {
            "id": response_id, "object": kind, "created": created, "model": config.name, "choices": [choice],
            "usage": _usage(last),
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await serve(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await serve(request, chat=True)

    return app


def _usage(last: Delta) -> dict:
    return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens, "total_tokens": last.prompt_tokens + last.completion_tokens}


async def _collect(engine: Engine, request: Request, request_id: str, queue: asyncio.Queue) -> tuple[str, Delta]:
    """Wait for the whole answer; a client that disconnects meanwhile cancels the request."""
    parts: list[str] = []
    try:
        while True:
            try:
                delta: Delta = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    engine.cancel(request_id)
                    raise asyncio.CancelledError from None
                continue
            parts.append(delta.text)
            if delta.finish_reason is not None:
                return "".join(parts), delta
    except asyncio.CancelledError:
        engine.cancel(request_id)
        raise


async def _stream(engine, request, request_id, queue, parsed, kind, response_id, created, model_name, chat) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of text, the finish reason, usage if asked, [DONE]."""
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice_body: dict, finish: str | None, usage: dict | None = None, choices: bool = True) -> str:
        payload: dict[str, Any] = {"id": response_id, "object": chunk_kind, "created": created, "model": model_name}
        payload["choices"] = [{"index": 0, **choice_body, "finish_reason": finish}] if choices else []
        if parsed.include_usage:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    def piece(text: str) -> dict:
        return {"delta": {"content": text}} if chat else {"text": text, "logprobs": None}

    finished = False
    try:
        if chat:
            yield event({"delta": {"role": "assistant", "content": ""}}, None)
        while True:
            delta: Delta = await queue.get()
            if delta.error is not None:
                yield f"data: {json.dumps(error_body(delta.error, 'server_error'))}\n\n"
                finished = True
                break
            if delta.text or delta.finish_reason is not None:
                yield event(piece(delta.text), delta.finish_reason)
            if delta.finish_reason is not None:
                finished = True
                if parsed.include_usage:
                    yield event({}, None, _usage(delta), choices=False)
                break
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away: free the row at the next step
            engine.cancel(request_id)
