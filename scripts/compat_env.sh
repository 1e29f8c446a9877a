#!/usr/bin/env bash
# A second venv with optimum-onnx (which pins transformers < 4.58, so it cannot live beside us):
# the tests load our exported folders in its ORTModelForCausalLM. Sourced by test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPAT="${OPTIMUM_ONNX23_COMPAT_VENV:-$ROOT/.venv-compat}"
PY="$(command -v python3.11 || command -v python3)"
stamp="$COMPAT/.installed-$(sha1sum "$ROOT/scripts/compat_env.sh" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[env] creating $COMPAT (optimum-onnx, transformers 4.x) for the compatibility tests" >&2
  "$PY" -m venv "$COMPAT"
  "$COMPAT/bin/python" -m pip install -q "torch==2.13.0"
  "$COMPAT/bin/python" -m pip install -q "optimum-onnx==0.1.0" "onnxruntime>=1.23"
  rm -f "$COMPAT"/.installed-*; touch "$stamp"
fi
export OPTIMUM_ONNX23_COMPAT_PYTHON="$COMPAT/bin/python"
