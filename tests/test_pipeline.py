"""`optimum_onnx23.pipeline("text-generation", accelerator="ort")` gives what transformers'
text-generation pipeline gives on the same weights: strings, lists, chats, return_full_text."""

from __future__ import annotations

import pytest
from transformers import pipeline as transformers_pipeline

from optimum_onnx23 import pipeline
from optimum_onnx23.errors import InvalidArgumentError

CHAT = [{"role": "user", "content": "What is ONNX?"}]


@pytest.fixture(scope="module")
def pipes(exported_dir):
    from tiny_models import BUNDLED

    ours = pipeline("text-generation", model=exported_dir("bundled"), accelerator="ort")
    theirs = transformers_pipeline("text-generation", model=str(BUNDLED))
    theirs.tokenizer.padding_side = "left"
    return ours, theirs


@pytest.mark.parametrize(
    "inputs, kwargs",
    [
        ("ONNX is", dict(max_new_tokens=20)),
        ("ONNX is", dict(max_new_tokens=12, return_full_text=False)),
        (["ONNX is", "A much longer prompt about the exporter"], dict(max_new_tokens=10, batch_size=2)),
        (CHAT, dict(max_new_tokens=12)),
        (CHAT, dict(max_new_tokens=12, return_full_text=False)),
        ("ONNX is", dict(max_new_tokens=12, num_beams=3, num_return_sequences=2)),
        ("ONNX is", dict(max_new_tokens=30, stop_sequence="format")),
    ],
    ids=["string", "new_text", "list", "chat", "chat_new_text", "beams", "stop_sequence"],
)
def test_pipeline_matches_transformers(pipes, inputs, kwargs):
    ours, theirs = pipes
    got = ours(inputs, do_sample=False, **kwargs)
    expected = theirs(inputs, do_sample=False, **kwargs)
    assert got == expected


def test_demo_call(pipes):
    ours, _ = pipes
    out = ours("ONNX is", max_new_tokens=20)
    assert isinstance(out, list) and set(out[0]) == {"generated_text"}
    assert out[0]["generated_text"].startswith("ONNX is") and len(out[0]["generated_text"]) > len("ONNX is ")


def test_unknown_accelerator_gets_optimums_error(exported_dir):
    with pytest.raises(ValueError, match=r"^Accelerator tpu not recognized\. Please use 'ort' or 'ov'\.$"):
        pipeline("text-generation", model=exported_dir("bundled"), accelerator="tpu")


def test_unsupported_task(exported_dir):
    with pytest.raises(InvalidArgumentError, match="text-generation"):
        pipeline("summarization", model=exported_dir("bundled"), accelerator="ort")
