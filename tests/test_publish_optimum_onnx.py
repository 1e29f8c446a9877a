"""The card's optimum-onnx snippet, run as written on the Hub layout, in optimum-onnx's own venv.

optimum-onnx pins transformers < 4.58, so it lives in the compatibility venv that scripts/test.sh
builds (scripts/compat_env.sh) and names in OPTIMUM_ONNX23_COMPAT_PYTHON.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from optimum_onnx23.publish import save_pretrained

COMPAT_PYTHON = os.environ.get("OPTIMUM_ONNX23_COMPAT_PYTHON")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not COMPAT_PYTHON or not Path(COMPAT_PYTHON).exists(),
        reason="optimum-onnx's venv is not set up: run through scripts/test.sh, or set OPTIMUM_ONNX23_COMPAT_PYTHON",
    ),
]

# The usage section of the card, with the prompt given as ids so that tokenizers play no part.
SNIPPET = """
import json, sys, torch
from optimum.onnxruntime import ORTModelForCausalLM
model = ORTModelForCausalLM.from_pretrained(sys.argv[1], subfolder="onnx", file_name="model.onnx")
ids = torch.tensor([json.loads(sys.argv[2])])
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12, do_sample=False)
print(json.dumps(out[0].tolist()))
"""


def test_optimum_onnx_generates_like_transformers_from_the_hub_layout(exported_dir, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "tiny-llama-onnx23"
    layout = save_pretrained(exported_dir("llama"), folder, "onnx-community-test/tiny-llama-onnx23")
    assert 'subfolder="onnx", file_name="model.onnx"' in layout.card.text  # the snippet tested here
    prompt = [1, 45, 300, 12, 9, 77, 31]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [COMPAT_PYTHON, "-c", SNIPPET, str(folder), json.dumps(prompt)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    ids = torch.tensor([prompt])
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    with torch.no_grad():
        expected = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert got == expected[0].tolist()
