"""The real checkpoint (SmolLM2-135M-Instruct, 30 layers, real tokenizer and chat template):
default-flag export, chat answers, beam search and static cache against PyTorch, `forward`,
export straight from its GGUF file, and validation that still refuses broken graphs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from graph_bugs import BUGS
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import pipeline as transformers_pipeline

from optimum_onnx23 import ORTModelForCausalLM, pipeline
from optimum_onnx23.errors import ValidationError
from optimum_onnx23.exporters import get_export_config
from optimum_onnx23.exporters.tracing.signature import build_signature
from optimum_onnx23.exporters.validate import DEFAULT_TOLERANCES, compare_with_references, pytorch_references
from optimum_onnx23.pipelines.generation import single_threaded_torch

pytestmark = pytest.mark.real_checkpoint

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "List three fruits."}],
]
TEXT = (
    "ONNX is an open format built to represent machine learning models. It defines a common set of operators "
    "and a common file format so that models can move between frameworks, tools, runtimes and compilers.\n"
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
)


@pytest.fixture(scope="module")
def torch_model(real_checkpoint):
    return AutoModelForCausalLM.from_pretrained(real_checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(real_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(real_checkpoint)
    tokenizer.padding_side = "left"
    return tokenizer


def test_default_export_passes_and_reports_errors_and_tolerance(real_exported_dir):
    report = json.loads((real_exported_dir() / "export_report.json").read_text())
    assert (report["atol"], report["rtol"]) == (DEFAULT_TOLERANCES["fp32"].atol, DEFAULT_TOLERANCES["fp32"].rtol)
    assert report["traced_layers"] == 4 and report["warnings"] == []
    assert report["fusions"]["op_counts"] == {"Attention": 30, "RMSNormalization": 61, "RotaryEmbedding": 60, "LayerNormalization": 0}
    assert len(report["validation"]) == 3
    for shape, diffs in report["validation"].items():
        allowed = report["validation_allowed"][shape]
        assert set(diffs) == set(allowed) and len(diffs) == 61  # logits + 30 layers x (key, value)
        assert all(diffs[name] <= allowed[name] for name in diffs)
        # fp32 rounding over 30 layers: well above the tiny models' 1e-5, far below a real bug's >0.1
        assert 1e-6 < diffs["logits"] < 1e-2
        top1 = report["validation_top1"][shape]
        assert top1["mismatches"] == 0 and top1["positions"] >= 3


def test_chat_answers_match_pytorch(real_exported_dir, real_checkpoint, tokenizer, torch_model):
    ours = pipeline("text-generation", model=real_exported_dir(), accelerator="ort")
    theirs = transformers_pipeline("text-generation", model=torch_model, tokenizer=tokenizer)
    kwargs = dict(max_new_tokens=40, do_sample=False, batch_size=len(CHATS), return_full_text=False)
    got = ours(CHATS, **kwargs)
    with single_threaded_torch():  # token by token: torch's second thread beside the other xdist worker is slower
        expected = theirs(CHATS, **kwargs)
    assert got == expected
    assert "Paris" in got[0][0]["generated_text"]  # the real model, not noise


BEAMS = dict(max_new_tokens=24, num_beams=4, num_return_sequences=2, do_sample=False)


@pytest.fixture(scope="module")
def pytorch_beams(tokenizer, torch_model):
    """Three left-padded chat prompts and PyTorch's beam search on them, once for both caches."""
    prompts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in CHATS[:3]]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    assert inputs["attention_mask"].min() == 0  # left padding exercised
    with single_threaded_torch():
        return inputs, torch_model.generate(**inputs, **BEAMS)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_beam_search_matches_pytorch(cache, real_checkpoint, real_exported_dir, pytorch_beams, tmp_path):
    from conftest import run_optimum_cli

    # The static export serves this test alone: written under tmp_path (removed when it passes), not
    # kept with the shared exports for the whole run.
    folder = real_exported_dir() if cache == "dynamic" else tmp_path / "static"
    if cache == "static":
        assert run_optimum_cli("export", "onnx", "--dynamo", "--model", real_checkpoint, "--cache", "static", "--max-cache-len", "128", folder) == 0
    model = ORTModelForCausalLM.from_pretrained(folder)
    assert model.io.static == (cache == "static")
    inputs, expected = pytorch_beams
    assert torch.equal(model.generate(**inputs, **BEAMS), expected)


def test_forward_logits_and_cache_match_pytorch(real_exported_dir, tokenizer, torch_model):
    model = ORTModelForCausalLM.from_pretrained(real_exported_dir())
    inputs = tokenizer([TEXT, "Hello, how are"], return_tensors="pt", padding=True)
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        expected = torch_model(**inputs).logits
    got = model(**inputs)
    assert got.logits.shape == expected.shape
    scale = expected[mask].abs().max()
    assert (got.logits - expected)[mask].abs().max() <= 1e-4 * scale
    assert torch.equal(got.logits[mask].argmax(-1), expected[mask].argmax(-1))
    # the same logits in two chunks, the first chunk's cache fed back
    split = 24
    first = model(input_ids=inputs["input_ids"][:, :split], attention_mask=inputs["attention_mask"][:, :split])
    second = model(input_ids=inputs["input_ids"][:, split:], attention_mask=inputs["attention_mask"], cache=first.cache)
    assert second.cache.layers[0].keys.shape[2] == inputs["input_ids"].shape[1]
    assert (second.logits - expected[:, split:])[mask[:, split:]].abs().max() <= 1e-4 * scale


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gguf_file_export_equals_the_converted_folder(real_gguf, real_exported_dir, tmp_path):
    from conftest import run_optimum_cli

    out = tmp_path / "onnx-smollm2-from-gguf"
    code = run_optimum_cli("export", "onnx", "--dynamo", "--model", real_gguf.parent, "--gguf-file", real_gguf.name, out)
    assert code == 0
    converted = real_exported_dir()
    assert _sha256(out / "model.onnx_data") == _sha256(converted / "model.onnx_data")
    ours, theirs = (onnx.load(str(folder / "model.onnx"), load_external_data=False) for folder in (out, converted))
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in theirs.graph.node]
    assert [i.name for i in ours.graph.input] == [i.name for i in theirs.graph.input]
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and "quantization_config" not in config
    assert json.loads((out / "export_report.json").read_text())["gguf_file"] == real_gguf.name
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>system")


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_default_validation_refuses_broken_graphs(bug, real_exported_dir, real_checkpoint, torch_model, tmp_path):
    """The default tolerance passes the correct 30-layer graph (the export above) and fails it
    with a bug that only moves positions by one or unmasks the left padding."""
    folder = real_exported_dir()
    model = ir.load(folder / "model.onnx")
    BUGS[bug](model.graph)
    os.link(folder / "model.onnx_data", tmp_path / "model.onnx_data")  # onnxruntime refuses symlinks that leave the folder
    ir.save(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    config = torch_model.config
    export_config = get_export_config(config.model_type)
    signature = build_signature(export_config, config, with_past=True)
    references = pytorch_references(signature.wrapper(torch_model), signature, torch.float32, torch.device("cpu"))
    with pytest.raises(ValidationError, match="differ from PyTorch beyond atol=0.0001, rtol=0.0001"):
        compare_with_references(session, references, DEFAULT_TOLERANCES["fp32"])
