"""Ctrl-C and SIGTERM that stop long work even where Python drops the KeyboardInterrupt.

A KeyboardInterrupt raised inside a weakref or import-lock callback (torch.export imports lazily
while it traces) is printed as "Exception ignored in ..." and dropped: the export would run on to
the end. `installed` makes both signals raise and also records them; `raise_if_stopped`, called
between the export's steps, raises again what was dropped, so the export still stops (and its
staging folder is removed) at the next step. SIGTERM (`kill`, a container stopping) would
otherwise end the process without unwinding, leaving the `.partial` folder behind.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "installed", "raise_if_stopped"]

_stopped: type[KeyboardInterrupt] | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt so that what cleans up after Ctrl-C also runs."""


def _handler(signum, frame) -> None:
    global _stopped
    _stopped = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    raise _stopped()


def _unraisable(hook):
    def quiet(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt) and _stopped:
            return  # recorded: raised again at the next step, without the "Exception ignored" traceback
        hook(unraisable)

    return quiet


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Both handlers (and the quiet unraisable hook) while the block runs, the previous ones after:
    the CLI may run inside a test process. Outside the main thread, nothing is installed. SIGINT
    keeps SIG_IGN where the process was started with it (a job run in the background)."""
    global _stopped
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    if previous[signal.SIGINT] is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    sys.unraisablehook = _unraisable(hook)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = hook
        _stopped = None


def raise_if_stopped() -> None:
    if _stopped is not None:
        raise _stopped()
