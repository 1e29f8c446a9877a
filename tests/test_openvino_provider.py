"""The same file on onnxruntime's OpenVINO execution provider (onnxruntime-openvino 1.24.1, in its own
venv .venv-openvino: it replaces the `onnxruntime` module). Our `ORTModelForCausalLM` with
`provider="OpenVINOExecutionProvider"`, OpenVINO's own provider options and
`session.disable_cpu_ep_fallback=1` (a node OpenVINO cannot take fails session creation instead of
running on the CPU provider) picks the `portable-opset21` variant for the fp32 graph and
`portable-opset21.ort-cpu-int4` for the int4 one, and generates PyTorch's greedy tokens on the real
SmolLM2-135M-Instruct (fp32), and our CPU provider's int4 tokens (int4; tests/test_real_variants.py
ties that form to PyTorch by perplexity). One subprocess runs every job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23.variants import attach_builtin_variants, list_variants
from optimum_onnx23.variants.folder import load_model

OPENVINO_PYTHON = os.environ.get("OPTIMUM_ONNX23_OPENVINO_PYTHON")
SCRIPT = Path(__file__).parent / "openvino_provider" / "provider_generate.py"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
NEW_TOKENS = 16
OPENVINO = "OpenVINOExecutionProvider"
NO_FALLBACK = {"session.disable_cpu_ep_fallback": "1"}

pytestmark = [
    pytest.mark.real_checkpoint,
    pytest.mark.interop,
    pytest.mark.skipif(
        not OPENVINO_PYTHON or not Path(OPENVINO_PYTHON).exists(),
        reason="no onnxruntime-openvino venv: run through scripts/test.sh, which creates .venv-openvino (scripts/openvino_env.sh)",
    ),
]


@pytest.fixture(scope="module")
def fp32_portable(real_exported_dir, module_tmp) -> Path:
    folder = module_tmp / "smollm2"
    shutil.copytree(real_exported_dir(), folder)
    attach_builtin_variants(folder, ["portable-opset21"])
    return folder


@pytest.fixture(scope="module")
def runs(fp32_portable, real_variants_dir, module_tmp) -> dict:
    int4 = real_variants_dir[0]
    # OpenVINO's model cache, as its users pass it: the folder is filled on the first session.
    cache = module_tmp / "openvino-cache"
    cache.mkdir()
    options = {"device_type": "CPU", "precision": "FP32", "cache_dir": str(cache)}
    jobs = {
        "fp32 openvino": {"folder": str(fp32_portable), "provider": OPENVINO, "provider_options": options, "session_config": NO_FALLBACK},
        "int4 openvino": {"folder": str(int4), "provider": OPENVINO, "provider_options": options, "session_config": NO_FALLBACK},
        "int4 cpu": {"folder": str(int4), "provider": "CPUExecutionProvider"},
    }
    payload = [{**job, "prompt": PROMPT, "max_new_tokens": NEW_TOKENS} for job in jobs.values()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([OPENVINO_PYTHON, str(SCRIPT)], input=json.dumps(payload), capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = dict(zip(jobs, json.loads(run.stdout.strip().splitlines()[-1])))
    for name, result in results.items():
        assert "error" not in result, f"{name}: {result.get('traceback')}"
    results["cache entries"] = sorted(p.name for p in cache.iterdir())
    return results


def test_fp32_on_openvino_provider_generates_pytorchs_tokens(runs, real_checkpoint):
    result = runs["fp32 openvino"]
    assert result["onnxruntime"] == "1.24.1" and result["providers"][0] == OPENVINO
    assert result["variant"] == "portable-opset21"
    tokenizer = AutoTokenizer.from_pretrained(real_checkpoint)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(real_checkpoint, dtype=torch.float32).eval()
    expected = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1]:]
    assert result["ids"] == expected.tolist()


def test_int4_on_openvino_provider_generates_the_cpu_providers_tokens(runs, real_variants_dir):
    names = {info.name for info in list_variants(load_model(real_variants_dir[0] / "model.onnx"))}
    assert {"portable-opset21.ort-cpu-int4", "portable-opset21.ort-cpu-int8"} <= names
    ov, cpu = runs["int4 openvino"], runs["int4 cpu"]
    assert ov["variant"] == "portable-opset21.ort-cpu-int4" and cpu["variant"] == "ort-cpu-int4"
    assert ov["providers"][0] == OPENVINO
    assert len(ov["ids"]) == NEW_TOKENS and ov["ids"] == cpu["ids"]


def test_openvino_provider_options_reach_the_provider(runs):
    """`cache_dir` in provider_options: OpenVINO wrote its compiled-model cache there."""
    assert runs["cache entries"], "OpenVINO's cache_dir stayed empty: the provider options did not reach it"
