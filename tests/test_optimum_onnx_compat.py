"""Our exported folders load in optimum-onnx's ORTModelForCausalLM (run in its own venv, since it
pins transformers < 4.58) and generate the same greedy ids as transformers 5 on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

COMPAT_PYTHON = os.environ.get("OPTIMUM_ONNX23_COMPAT_PYTHON")
SCRIPT = Path(__file__).parent / "compat" / "optimum_onnx_generate.py"
PROMPTS = ["ONNX is", "Hello! I am a tiny"]

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not COMPAT_PYTHON or not Path(COMPAT_PYTHON).exists(),
        reason="no optimum-onnx venv: run through scripts/test.sh, which creates .venv-compat",
    ),
]


@pytest.mark.parametrize("model_type", ["bundled", "qwen3"])
def test_optimum_onnx_ort_model_generates_like_transformers(model_type, exported_dir, tiny_model_dir):
    from tiny_models import BUNDLED

    folder = exported_dir(model_type)
    source = BUNDLED if model_type == "bundled" else tiny_model_dir(model_type)
    run = subprocess.run([COMPAT_PYTHON, str(SCRIPT), str(folder), "10", *PROMPTS], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["use_cache"] is True

    tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    model = AutoModelForCausalLM.from_pretrained(source)
    expected = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert result["ids"] == expected.tolist()
