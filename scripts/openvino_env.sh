#!/usr/bin/env bash
# A third venv, .venv-openvino, where onnxruntime is `onnxruntime-openvino` (onnxruntime with
# OpenVINOExecutionProvider, bundling OpenVINO 2025.4): the two wheels install the same `onnxruntime`
# module, so it cannot live beside our .venv. Our package goes in with --no-deps (its `onnxruntime`
# requirement would pull the plain wheel over it), then what it imports. torch is the CPU build,
# installed first and alone, as scripts/env.sh does: no resolver ever pulls a CUDA build.
# Sourced by test.sh; tests/test_openvino_provider.py runs in it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OPENVINO_VENV="${OPTIMUM_ONNX23_OPENVINO_VENV:-$ROOT/.venv-openvino}"
PY="$(command -v python3.11 || command -v python3)"
stamp="$OPENVINO_VENV/.installed-$(sha1sum "$ROOT/scripts/openvino_env.sh" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[env] creating $OPENVINO_VENV (onnxruntime-openvino) for the OpenVINO provider tests" >&2
  "$PY" -m venv "$OPENVINO_VENV"
  if [ "$(uname -s)" = Linux ]; then
    "$OPENVINO_VENV/bin/python" -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || "$OPENVINO_VENV/bin/python" -m pip install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  else
    "$OPENVINO_VENV/bin/python" -m pip install -q "torch==2.13.0"
  fi
  "$OPENVINO_VENV/bin/python" -m pip install -q "onnxruntime-openvino==1.24.1" \
    "transformers>=5.0,<6" "optimum>=2.2" "onnx>=1.19" "onnx-ir>=0.1.10" "onnxscript>=0.7,<0.8" \
    "huggingface_hub>=1.0" safetensors tokenizers numpy tqdm filelock
  "$OPENVINO_VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  # Only the OpenVINO build may provide `onnxruntime`: a plain wheel pulled by anything would shadow it.
  if "$OPENVINO_VENV/bin/python" -m pip show -q onnxruntime >/dev/null 2>&1; then
    echo "[env] $OPENVINO_VENV has the plain onnxruntime wheel beside onnxruntime-openvino; remove the folder and rerun" >&2
    exit 1
  fi
  rm -f "$OPENVINO_VENV"/.installed-*; touch "$stamp"
fi
export OPTIMUM_ONNX23_OPENVINO_PYTHON="$OPENVINO_VENV/bin/python"
