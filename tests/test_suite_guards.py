"""The suite's own guarantees (conftest.py): it runs offline whatever the caller's shell exports,
and under CI=true an interop test that skips (its consumer environment is missing) fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def test_the_hub_is_offline_inside_the_session():
    from huggingface_hub import constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert constants.HF_HUB_OFFLINE is True


def _pytest(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in env and k != "PYTEST_XDIST_WORKER"}
    environment.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs", *args],
        cwd=TESTS.parent, env=environment, capture_output=True, text=True, timeout=300,
    )


def test_offline_even_when_the_shell_says_otherwise():
    run = _pytest(f"{TESTS / 'test_suite_guards.py'}::test_the_hub_is_offline_inside_the_session", HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
    assert run.returncode == 0, run.stdout[-2000:]
    assert "1 passed" in run.stdout


def test_a_skipped_interop_test_fails_under_ci(tmp_path):
    """transformers.js' folder unset: a plain run skips its tests; CI=true turns the skip into a failure."""
    target = f"{TESTS / 'test_publish_transformers_js.py'}::test_card_snippet_generates_like_transformers"
    missing = str(tmp_path / "no-transformers-js")
    local = _pytest(target, OPTIMUM_ONNX23_TRANSFORMERS_JS=missing, CI=None)
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout[-2000:]
    ci = _pytest(target, OPTIMUM_ONNX23_TRANSFORMERS_JS=missing, CI="true")
    assert ci.returncode == 1 and "2 errors" in ci.stdout, ci.stdout[-2000:]  # failed at setup, where it skipped
    assert "interop test skipped under CI=true" in ci.stdout and "transformers.js is not installed" in ci.stdout
