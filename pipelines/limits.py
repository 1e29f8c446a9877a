"""How many positions a model can attend to, checked before any compute: the model's context
(`max_position_embeddings` and its older names) or, for static-cache exports, the cache buffer."""

from __future__ import annotations

from optimum_onnx23.errors import InvalidArgumentError

from .io_spec import DecoderIO

__all__ = ["context_length", "check_context"]

# transformers' names for the longest sequence a model was built for, by family age.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(config, io: DecoderIO) -> tuple[int | None, str]:
    """(positions, the config field or flag that sets it); (None, "") when neither the graph nor the config
    bounds it (ALiBi, recurrent models without a declared context)."""
    if io.static:
        return io.max_cache_len, "--max-cache-len"
    text_config = getattr(config, "get_text_config", lambda: config)()
    for name in _CONTEXT_FIELDS:
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value, name
    return None, ""


def check_context(config, io: DecoderIO, needed: int, what: str) -> None:
    """One-line `InvalidArgumentError` when `needed` positions exceed the model's context."""
    limit, source = context_length(config, io)
    if limit is None or needed <= limit:
        return
    if io.static:
        raise InvalidArgumentError(
            f"{what} need {needed} cache positions but this static-cache export holds {limit}; "
            "lower max_new_tokens or re-export with a larger --max-cache-len."
        )
    raise InvalidArgumentError(
        f"{what} need {needed} positions but the model's context is {limit} ({source} in config.json); "
        "shorten the prompt or lower max_new_tokens."
    )
