"""Our exported folders load in optimum-onnx's ORTModelForCausalLM (run in its own venv, since it
pins transformers < 4.58) and generate the same greedy ids as transformers 5 on the same weights,
for every model type both support. One subprocess runs them all (importing the libraries is most
of its time)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from architecture_records import record
from transformers import AutoModelForCausalLM, AutoTokenizer

COMPAT_PYTHON = os.environ.get("OPTIMUM_ONNX23_COMPAT_PYTHON")
SCRIPT = Path(__file__).parent / "compat" / "optimum_onnx_generate.py"
PROMPTS = ["ONNX is", "Hello! I am a tiny"]
NEW_TOKENS = 10
# Model types optimum-onnx 0.1.0 registers for text generation that we export ("bundled" is the
# committed tiny Llama). gpt_bigcode and bloom: on transformers >= 4.54 / 4.44 (its venv has 4.57)
# it expects the standard [batch, kv_heads, past, head_dim] cache, not their old fused layouts.
# gemma3 is exported as its gemma3_text decoder, which optimum-onnx also registers.
MODEL_TYPES = [
    "bundled", "qwen3", "arcee", "bloom", "codegen", "cohere", "falcon", "gemma", "gemma3", "glm", "gpt_bigcode",
    "gpt_neox", "gptj", "helium", "nemotron", "olmo", "opt", "phi", "stablelm",
]

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not COMPAT_PYTHON or not Path(COMPAT_PYTHON).exists(),
        reason="no optimum-onnx venv: run through scripts/test.sh, which creates .venv-compat",
    ),
]


@pytest.fixture(scope="module")
def optimum_onnx_ids(exported_dir):
    """model type -> what optimum-onnx's greedy generation returned for PROMPTS."""
    jobs = [{"folder": str(exported_dir(m)), "max_new_tokens": NEW_TOKENS, "prompts": PROMPTS} for m in MODEL_TYPES]
    run = subprocess.run([COMPAT_PYTHON, str(SCRIPT), "--many"], input=json.dumps(jobs), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return dict(zip(MODEL_TYPES, json.loads(run.stdout.strip().splitlines()[-1])))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_optimum_onnx_ort_model_generates_like_transformers(model_type, optimum_onnx_ids, tiny_model_dir):
    from tiny_models import BUNDLED

    result = optimum_onnx_ids[model_type]
    assert "error" not in result, result.get("traceback")
    assert result["use_cache"] is True

    source = BUNDLED if model_type == "bundled" else tiny_model_dir(model_type)
    tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    model = AutoModelForCausalLM.from_pretrained(source)
    expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert result["ids"] == expected.tolist()
    record("llama" if model_type == "bundled" else model_type, "optimum_onnx")
