#!/usr/bin/env bash
# Creates (or refreshes) .venv from the repo's own files. Sourced by demo.sh and test.sh.
# torch==2.13.0's CPU build is installed first and on its own so that no resolver ever pulls a CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OPTIMUM_ONNX23_VENV:-$ROOT/.venv}"
PY="$(command -v python3.11 || command -v python3)"
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[env] creating $VENV with $($PY --version)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # The CPU build, "+cpu": a wheel pip already finds (a find-links folder, a local index), else
  # PyTorch's CPU index. Never plain PyPI on Linux, whose torch==2.13.0 is the CUDA build (GBs of
  # nvidia-* wheels). macOS and Windows have no "+cpu" build: PyPI's wheel is the CPU one there.
  if [ "$(uname -s)" = Linux ]; then
    "$VENV/bin/python" -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || "$VENV/bin/python" -m pip install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  else
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  fi
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  rm -f "$VENV"/.installed-*; touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
