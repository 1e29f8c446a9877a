"""The export arguments' one-line checks that need neither torch, transformers nor the model.

`export()` runs them first; `optimum-cli export onnx` runs them before it imports anything heavy,
so that a mistyped flag is answered in a fraction of a second instead of after ~4 s of imports.
Only the device (`--device`, which needs torch) and the model itself are checked later.
"""

from __future__ import annotations

from typing import Sequence

from .errors import InvalidArgumentError

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "CACHE_MODES",
    "DTYPE_NAMES",
    "LOGITS_MODES",
    "MIN_OPSET",
    "TASK_NAMES",
    "VARIANT_NAMES",
    "check_export_arguments",
    "check_known",
    "check_opset",
    "check_static_arguments",
    "max_opset",
]

# The exporter's own tables hold the same names (exporters.families.TASKS, exporters.steps.DTYPES,
# variants.producers.BUILTIN); tests/test_doorstep.py checks that they agree.
TASK_NAMES = ("text-generation", "text-generation-with-past")
DTYPE_NAMES = ("fp32", "fp16", "bf16")
LOGITS_MODES = ("all", "last")
CACHE_MODES = ("dynamic", "static")
# transformers attention code traced instead of the family's own (which fuses into opset-23 Attention):
# `flex_attention` exports torch's flex_attention op as ai.onnx.preview.FlexAttention.
ATTN_IMPLEMENTATIONS = ("flex_attention",)
VARIANT_NAMES = ("int4", "int8", "ort-cpu-int4", "ort-cpu-int8", "ort-cpu-moe", "ort-cpu-gqa", "ort-cpu", "backend-context", "portable-opset21", "ort-cpu-functions")
MIN_OPSET = 18
# Every onnx this package accepts (onnx>=1.19, pyproject.toml) knows opset 24: only a higher opset
# needs onnx imported (about 1 s, mostly ml_dtypes) to learn the installed one's newest.
_KNOWN_BY_EVERY_ONNX = 24


def max_opset() -> int:
    """The newest opset the installed onnx knows."""
    import onnx

    return onnx.defs.onnx_opset_version()


def check_known(value: str, known: Sequence[str], what: str, flag: str) -> None:
    if value not in known:
        raise InvalidArgumentError(f"Unknown {what} `{value}`; pass {flag} with one of: {', '.join(known)}.")


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise InvalidArgumentError(f"--opset takes a whole number (default 23), got {opset!r}.")
    if opset < MIN_OPSET:
        raise InvalidArgumentError(
            f"Opset {opset} is out of range: pass --opset between {MIN_OPSET} and the newest the installed onnx knows "
            "(default 23; 23 or more gets the fused Attention ops)."
        )
    if opset > _KNOWN_BY_EVERY_ONNX and opset > max_opset():
        import onnx

        raise InvalidArgumentError(
            f"Opset {opset} is out of range: pass --opset between {MIN_OPSET} and {max_opset()} "
            f"(the newest onnx {onnx.__version__} knows); 23 or more gets the fused Attention ops."
        )


def check_static_arguments(cache: str, max_cache_len: int | None, with_past: bool, opset: int = 23) -> None:
    """One-line `InvalidArgumentError` for a cache mode the exporter cannot produce."""
    if cache not in CACHE_MODES:
        raise InvalidArgumentError(f"Unknown cache mode `{cache}`; pass --cache dynamic or --cache static.")
    if cache == "dynamic":
        if max_cache_len is not None:
            raise InvalidArgumentError("--max-cache-len only applies to --cache static; drop it or add --cache static.")
        return
    if not with_past:
        raise InvalidArgumentError("--cache static needs the KV cache: use --task text-generation-with-past.")
    if opset < 23:
        raise InvalidArgumentError(f"--cache static needs --opset 23 (the graph is then moved to opset 24 for TensorScatter), got {opset}.")
    if max_cache_len is None or not isinstance(max_cache_len, int) or max_cache_len < 16:
        raise InvalidArgumentError(
            f"--cache static needs --max-cache-len N with N >= 16 (prompt plus new tokens), got {max_cache_len}."
        )


def check_export_arguments(
    *,
    task: str,
    opset: int,
    dtype: str,
    atol: float | None,
    rtol: float | None,
    logits: str,
    cache: str,
    max_cache_len: int | None,
    variants: Sequence[str],
    attn_implementation: str | None = None,
    quant_budget: float | None = None,
) -> None:
    """Every export argument that can be judged without torch, in one line each (InvalidArgumentError)."""
    check_known(task, TASK_NAMES, "task", "--task")
    check_opset(opset)
    check_known(dtype, DTYPE_NAMES, "dtype", "--dtype")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not value >= 0:
            raise InvalidArgumentError(f"--{name} must be a non-negative number, got {value}.")
    if atol == 0 and rtol == 0:
        raise InvalidArgumentError("--atol 0 with --rtol 0 allows no rounding at all; pass a positive tolerance.")
    check_known(logits, LOGITS_MODES, "logits mode", "--logits")
    check_static_arguments(cache, max_cache_len, task == "text-generation-with-past", opset)
    if attn_implementation is not None:
        check_known(attn_implementation, ATTN_IMPLEMENTATIONS, "attention implementation", "--attn-implementation")
        if cache == "static":
            raise InvalidArgumentError("--attn-implementation flex_attention exports the dynamic cache only; drop --cache static.")
        if dtype != "fp32":
            raise InvalidArgumentError(f"--attn-implementation flex_attention is exported in fp32 only (its modifier graph is float32); drop --dtype {dtype}.")
    unknown = [name for name in variants if name not in VARIANT_NAMES]
    if unknown:
        raise InvalidArgumentError(f"Unknown variant {', '.join(unknown)}; pass --variant with one of: {', '.join(VARIANT_NAMES)}.")
    check_quant_budget(quant_budget)


def check_quant_budget(budget: float | None) -> None:
    """`--quant-budget`: a relative perplexity change in (0, 10)."""
    if budget is not None and not 0 < budget < 10:
        raise InvalidArgumentError(f"--quant-budget must be a relative perplexity change in (0, 10), e.g. 0.10 for +10%; got {budget}.")
