"""OpenAI's request fields and error body, checked before a request reaches the engine.

Bodies are read as JSON objects (unknown fields are ignored, as OpenAI does, unless they ask for
something this server does not do: those are refused by name). Every refusal is an
`OpenAIError` whose body is OpenAI's `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .sampling import SamplingParams

__all__ = ["OpenAIError", "CompletionRequest", "parse_completion", "parse_chat", "error_body"]


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_
        self.code = code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Fields OpenAI defines that this server does not serve: refused by name rather than ignored.
_UNSERVED = {
    "tools": "tool calls",
    "tool_choice": "tool calls",
    "functions": "function calls",
    "function_call": "function calls",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
    "suffix": "suffix insertion",
    "echo": "echoing the prompt",
    "logit_bias": "logit bias",
    "response_format": "structured output",
    "best_of": "best_of",
    "audio": "audio output",
    "prediction": "predicted outputs",
}


@dataclass
class CompletionRequest:
    model: str | None
    prompt: list[int] | None  # completions: token ids (after tokenizing a string prompt)
    prompt_text: str | None
    messages: list[dict] | None
    params: SamplingParams
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, kind: type, default, low=None, high=None, low_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise OpenAIError(400, f"`{name}` must be an integer, got {json.dumps(value)}.", name)
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise OpenAIError(400, f"`{name}` must be a number, got {json.dumps(value)}.", name)
    if low is not None and (value <= low if low_open else value < low):
        raise OpenAIError(400, f"`{name}` must be {'>' if low_open else '>='} {low}, got {value}.", name)
    if high is not None and value > high:
        raise OpenAIError(400, f"`{name}` must be <= {high}, got {value}.", name)
    return kind(value)


def _check_unserved(body: dict) -> None:
    for name, what in _UNSERVED.items():
        value = body.get(name)
        if value in (None, False, 0, [], {}) or (name == "response_format" and value == {"type": "text"}):
            continue
        raise OpenAIError(400, f"`{name}` is not supported by this server ({what}); remove the field.", name)
    n = body.get("n", 1)
    if n not in (None, 1):
        raise OpenAIError(400, f"`n` must be 1 on this server (one choice per request), got {json.dumps(n)}.", "n")


def _params(body: dict, default_max_tokens: int | None, prompt_length: int, max_model_len: int | None) -> SamplingParams:
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise OpenAIError(400, "`stop` must be a non-empty string or a list of up to 4 non-empty strings.", "stop")
    room = None if max_model_len is None else max_model_len - prompt_length
    max_tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, max_tokens_field, int, None, low=1)
    if max_tokens is None:
        max_tokens = default_max_tokens if default_max_tokens is not None else room
        if max_tokens is None:  # neither the request nor the model bounds it
            max_tokens = 1024
    if room is not None and (room <= 0 or max_tokens > room):
        raise OpenAIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_length + max_tokens} tokens ({prompt_length} in the prompt, {max_tokens} for the completion). "
            "Please reduce the length of the prompt or the completion.",
            max_tokens_field,
            code="context_length_exceeded",
        )
    top_k = _number(body, "top_k", int, 0, low=-1)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", float, 1.0, low=0, high=2),
        top_p=_number(body, "top_p", float, 1.0, low=0, high=1, low_open=True),
        top_k=0 if top_k == -1 else top_k,
        seed=_number(body, "seed", int, None),
        repetition_penalty=_number(body, "repetition_penalty", float, 1.0, low=0, low_open=True),
        min_tokens=_number(body, "min_tokens", int, 0, low=0),
        ignore_eos=bool(body.get("ignore_eos", False)),
        stop=stop,
    )


def _common(body: Any) -> tuple[bool, bool]:
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    _check_unserved(body)
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise OpenAIError(400, "`stream_options` must be an object.", "stream_options")
    if options and not stream:
        raise OpenAIError(400, "`stream_options` is only allowed when `stream` is true.", "stream_options")
    return stream, bool(options.get("include_usage", False))


def parse_completion(body: Any, tokenizer, max_model_len: int | None) -> CompletionRequest:
    """`POST /v1/completions`: `prompt` is a string, a list with one string, or token ids."""
    stream, include_usage = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        ids, text = list(tokenizer(prompt)["input_ids"]), prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if any(t < 0 or t >= len(tokenizer) for t in prompt):
            raise OpenAIError(400, f"`prompt` holds token ids outside the vocabulary (0..{len(tokenizer) - 1}).", "prompt")
        ids, text = list(prompt), None
    else:
        raise OpenAIError(400, "`prompt` must be a non-empty string or list of token ids (one prompt per request).", "prompt")
    params = _params(body, 16, len(ids), max_model_len)  # OpenAI's default max_tokens for completions
    return CompletionRequest(body.get("model"), ids, text, None, params, stream, include_usage)


def parse_chat(body: Any, tokenizer, max_model_len: int | None) -> CompletionRequest:
    """`POST /v1/chat/completions`: `messages` rendered with the model's chat template."""
    stream, include_usage = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "`messages` must be a non-empty list of {role, content} objects.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise OpenAIError(400, f"`messages[{i}]` needs a role of system, developer, user or assistant.", "messages")
        content = message.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise OpenAIError(400, f"`messages[{i}].content` parts must be text on this server.", "messages")
            message = {**message, "content": "".join(p.get("text", "") for p in content)}
            messages[i] = message
        elif not isinstance(content, str):
            raise OpenAIError(400, f"`messages[{i}].content` must be a string.", "messages")
        if message["role"] == "developer":
            messages[i] = {**message, "role": "system"}
    if getattr(tokenizer, "chat_template", None) is None:
        raise OpenAIError(400, "This model has no chat template; use /v1/completions with a prompt instead.", "messages")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    params = _params(body, None, len(ids), max_model_len)
    return CompletionRequest(body.get("model"), ids, text, messages, params, stream, include_usage)
