#!/usr/bin/env bash
# A venv for the OpenVINO GenAI rows of benchmarks/openvino_bench.py, .venv-ovgenai: optimum-intel 2.2
# (`optimum-cli export openvino`, transformers 5) and openvino-genai (LLMPipeline,
# ContinuousBatchingPipeline) pin their own openvino / optimum / transformers, so they stay out of
# our .venv. torch is the CPU build, installed first and alone: no resolver ever pulls a CUDA build.
# Benchmark-only: no test needs it. Prints the venv's python.
#   bash scripts/openvino_genai_env.sh      # creates .venv-ovgenai once (re-created when this file changes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OVGENAI_VENV="${OPTIMUM_ONNX23_OVGENAI_VENV:-$ROOT/.venv-ovgenai}"
PY="$(command -v python3.11 || command -v python3)"
OPENVINO="2026.4"  # openvino, openvino-genai and openvino-tokenizers move together (same release)
stamp="$OVGENAI_VENV/.installed-$(sha1sum "$ROOT/scripts/openvino_genai_env.sh" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[env] creating $OVGENAI_VENV (optimum-intel, openvino-genai $OPENVINO) for benchmarks/openvino_bench.py" >&2
  rm -rf "$OVGENAI_VENV"
  "$PY" -m venv "$OVGENAI_VENV"
  pip=("$OVGENAI_VENV/bin/python" -m pip install -q)
  # optimum-intel requires torchvision; 0.28 is the release of torch 2.13 (its `torch==2.13.0` accepts
  # the installed 2.13.0+cpu), and a constraints file keeps the resolver from swapping torch. PyPI's
  # torchvision is built against the CUDA torch and fails to import beside the CPU one (its
  # `torchvision::nms` registration), which breaks transformers' imports: it is removed afterwards
  # (transformers treats it as optional; text-generation export never uses it).
  torch="torch==2.13.0"
  if [ "$(uname -s)" = Linux ]; then
    torch="torch==2.13.0+cpu"
    "${pip[@]}" "$torch" 2>/dev/null || "${pip[@]}" "$torch" --extra-index-url https://download.pytorch.org/whl/cpu
  else
    "${pip[@]}" "$torch"
  fi
  echo "$torch" > "$OVGENAI_VENV/constraints.txt"
  "${pip[@]}" -c "$OVGENAI_VENV/constraints.txt" "torchvision==0.28.*" "optimum-intel[openvino]==2.2.*" \
    "openvino==$OPENVINO.*" "openvino-genai==$OPENVINO.*" "openvino-tokenizers==$OPENVINO.*"
  "$OVGENAI_VENV/bin/python" -m pip uninstall -q -y torchvision
  if "$OVGENAI_VENV/bin/python" -m pip list 2>/dev/null | grep -Eiq '^(nvidia-|triton )'; then
    echo "[env] $OVGENAI_VENV pulled CUDA packages; remove the folder and rerun" >&2
    exit 1
  fi
  rm -f "$OVGENAI_VENV"/.installed-*; touch "$stamp"
fi
echo "$OVGENAI_VENV/bin/python"
