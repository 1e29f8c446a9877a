#!/usr/bin/env bash
# The main job on the built-in default: export the bundled tiny Llama with the dynamo path
# at opset 23, then generate from the exported ONNX with onnxruntime.
#   bash scripts/demo.sh [FOLDER]   FOLDER defaults to demo-output/ at the top of this repository.
# A previous demo export in FOLDER is replaced; any other non-empty FOLDER is refused (nothing deleted).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
OUT="${1:-$ROOT/demo-output}"
python -m optimum_onnx23.demo --output "$OUT" --overwrite
