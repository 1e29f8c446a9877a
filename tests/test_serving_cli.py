"""`optimum-cli onnx23 serve` as a user runs it: a subprocess bound where it is told, answering
OpenAI requests, refusing bad arguments in one line, and on SIGTERM finishing the request it is
streaming before it exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from serving_helpers import free_port, wait_healthy  # noqa: E402

CLI = [sys.executable, "-m", "optimum.commands.optimum_cli", "onnx23", "serve"]


def test_bad_arguments_are_one_line():
    result = subprocess.run([*CLI, "somewhere", "--port", "70000"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == "error: --port must be 1-65535, got 70000."


def test_sigterm_finishes_the_running_request_then_exits(exported_dir):
    folder = exported_dir("bundled")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*CLI, str(folder), "--port", str(port), "--served-model-name", "tiny", "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        def alive():
            assert process.poll() is None, process.stderr.read()

        wait_healthy(url, check_alive=alive)
        # Bound to 127.0.0.1 only: another local address of this machine is not served.
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex(("127.0.0.2", port)) != 0
        body = {"model": "tiny", "prompt": "A long story:", "max_tokens": 240, "min_tokens": 240, "temperature": 0, "stream": True}
        events: list[str] = []
        first = threading.Event()

        def stream():
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(60)
        process.send_signal(signal.SIGTERM)
        reader.join(120)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        # uvicorn re-raises the captured SIGTERM once it has shut down, as an unhandled SIGTERM would end it.
        assert process.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
