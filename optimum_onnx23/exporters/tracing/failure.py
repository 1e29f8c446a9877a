"""One line for a failed torch.export / ONNX conversion: the module and the operation that failed.

torch.onnx.export wraps what went wrong in its own error (`TorchExportError`, "Failed to export the
model with torch.export. This is step 1/3 ...") over pages of traceback; the cause at the bottom of
that chain is the one that matters (a broadcast of mismatched head counts, a data-dependent branch,
an op without an ONNX translation). `describe_failure` reads that cause's traceback:

- the module: the innermost frame running the `forward` of one of the model's submodules, named by
  its path in the model (`model.layers.0.self_attn`) and its class;
- the operation: the innermost frame outside torch's own code, as its source line (transformers'
  `torch.nn.functional.scaled_dot_product_attention(...)`), or, for a conversion failure that has
  no model frame, the op the message names (`transformers.grouped_mm_fallback`);
- the cause's first line.

The CLI prints that line; `--verbose` prints the chain's full traceback before it.
"""

from __future__ import annotations

import linecache
import re
import traceback
from pathlib import Path

import torch

__all__ = ["describe_failure", "root_cause"]

_TORCH = str(Path(torch.__file__).resolve().parent)
_OPERATOR = re.compile(r"No ONNX function found for ([\w.:]+)|(?:operator|op) `?([\w.:]+)`?", re.IGNORECASE)


def root_cause(error: BaseException) -> BaseException:
    """The bottom of `error`'s cause chain (explicit `raise ... from`, else the implicit context)."""
    seen = {id(error)}
    while True:
        nxt = error.__cause__ or error.__context__
        if nxt is None or id(nxt) in seen:
            return error
        seen.add(id(nxt))
        error = nxt


def _first_line(error: BaseException) -> str:
    for line in str(error).splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line:
            return line[:300]
    return type(error).__name__


def _frames(error: BaseException):
    return [frame for frame, _ in traceback.walk_tb(error.__traceback__)]


def _module_frame(frames, names: dict[int, str]) -> str | None:
    for frame in reversed(frames):
        module = frame.f_locals.get("self")
        if isinstance(module, torch.nn.Module) and id(module) in names:
            return f"`{names[id(module)] or '(the model)'}` ({type(module).__name__})"
    return None


def _operation(frames, error: BaseException) -> str | None:
    for frame in reversed(frames):
        path = str(Path(frame.f_code.co_filename).resolve())
        if path.startswith(_TORCH):
            continue
        code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        where = f"{Path(path).parent.name}/{Path(path).name}:{frame.f_lineno}"
        return f"`{code}` ({where})" if code else where
    match = _OPERATOR.search(str(error))
    if match:
        return f"`{match.group(1) or match.group(2)}`"
    return None


def describe_failure(error: BaseException, model: torch.nn.Module, model_type: str, nearest: str) -> str:
    """One line: where in `model` tracing failed, on which operation, why, and the nearest supported type."""
    cause = root_cause(error)
    names = {id(m): name for name, m in model.named_modules()}
    frames = _frames(cause)
    module = _module_frame(frames, names)
    operation = _operation(frames, cause) if frames else _operation([], cause)
    where = " in " + module if module else ""
    at = " at " + operation if operation else ""
    if nearest == model_type:
        hint = f"`{model_type}` itself is supported: check this config's sizes (head counts, hidden size) against a released `{model_type}` checkpoint's"
    else:
        hint = f"the nearest supported type is `{nearest}`"
    return f"torch.export failed on `{model_type}`{where}{at}: {_first_line(cause)}. {hint}; --verbose shows the full trace."
