"""Shared by the serving tests: a free loopback port, and waiting for a server's /health."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout: float = 120, check_alive: Callable[[], None] | None = None) -> None:
    """Until `url`/health answers 200; `check_alive` runs while the server cannot be reached (it
    raises when the server process died, so a crash is reported at once, not after the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.HTTPError:
            if check_alive is not None:
                check_alive()
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy in {timeout:.0f} s")
