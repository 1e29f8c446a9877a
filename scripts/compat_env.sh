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

# transformers.js (npm) runs the Hub layout in the publish tests. --ignore-scripts skips
# onnxruntime-node's optional GPU download; its CPU binaries come in the tarball.
JS="${OPTIMUM_ONNX23_TRANSFORMERS_JS:-$ROOT/.node-compat}"
if command -v npm >/dev/null 2>&1; then
  if [ ! -d "$JS/node_modules/@huggingface/transformers" ]; then
    echo "[env] installing transformers.js into $JS" >&2
    mkdir -p "$JS"
    (cd "$JS" && npm install --silent --no-audit --no-fund --ignore-scripts "@huggingface/transformers@4.3.1" >&2)
  fi
  export OPTIMUM_ONNX23_TRANSFORMERS_JS="$JS"
else
  echo "[env] npm not found: the transformers.js test will be skipped" >&2
fi
