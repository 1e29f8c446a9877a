"""Our INFO lines (the exporter's `[i/N]` steps) on stderr for the length of one call, shared by the
CLI and by `from_pretrained`'s on-the-fly export.

Our logger only: onnxscript's optimizer logs every folded constant at INFO. The handler is removed
afterwards: the CLI also runs in-process (optimum-cli's `main()` from Python, a notebook, the
tests), where a handler left on the logger would keep writing to the sys.stderr of the first call
(a closed capture stream, so every later log line printed a logging traceback).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["progress_on_stderr"]


@contextlib.contextmanager
def progress_on_stderr(defer_to_root: bool) -> Iterator[None]:
    """Show our INFO lines on the current sys.stderr unless the application set up logging: a
    handler on our logger, or with `defer_to_root` one on any ancestor (the root) too. A command
    line owns its stderr (`defer_to_root=False`); a library call leaves a configured root alone."""
    ours = logging.getLogger("optimum_onnx23")
    if ours.hasHandlers() if defer_to_root else ours.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = ours.level
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
