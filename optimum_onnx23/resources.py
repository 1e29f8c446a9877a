"""Memory available to this process, and the rule that decides when a whole fp32 copy of a model
may be held (by the PyTorch model, an onnxruntime session, a quantization probe) or the bounded
paths must be taken (`--streamed` export, chunked validation and calibration; issue 27).

Guarantee: `whole_model_fits(n)` is True only when `n` bytes take at most `WHOLE_MODEL_SHARE` of
what is available (None, off Linux: True), so a model whose fp32 weights are more than half of
the machine's free memory is never held whole by the paths that check it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["WHOLE_MODEL_SHARE", "available_bytes", "whole_model_fits"]

# Half: the peak of a whole-model path is 1.1x-1.6x its weights (measured on the 1.07 B Llama),
# and other processes share the machine; above it, the bounded paths cost some time, not accuracy.
WHOLE_MODEL_SHARE = 0.5


def available_bytes() -> int | None:
    """What this process may still allocate: MemAvailable, lowered by a cgroup (v2) limit; None off Linux."""
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def whole_model_fits(nbytes: int, available: int | None = None) -> bool:
    """Whether a path that holds `nbytes` (a model's whole weights, with its overhead) may run."""
    available = available_bytes() if available is None else available
    return available is None or nbytes <= WHOLE_MODEL_SHARE * available
