"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (10^6 bytes).

    Not `ru_maxrss`: Linux carries it across exec from the parent that forked us, so a child
    would report its parent's peak whenever that is larger. VmHWM belongs to this image alone.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6  # kB (KiB) -> decimal MB
    raise RuntimeError("no VmHWM in /proc/self/status")


def best(fn, repeats: int) -> float:
    """The shortest of `repeats` wall-clock runs of `fn()`, in seconds (the machine may be shared)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
