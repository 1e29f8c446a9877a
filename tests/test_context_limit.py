"""A prompt plus max_new_tokens over the model's context is one clear error before any compute, the
same in generate(), the pipeline and forward() (the bundled Llama: 256 positions)."""

from __future__ import annotations

import numpy as np
import pytest

from optimum_onnx23 import pipeline
from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.pipelines import ORTModelForCausalLM

CONTEXT = 256
MESSAGE = r"need 272 positions but the model's context is 256 \(max_position_embeddings in config\.json\); shorten the prompt"


@pytest.fixture(scope="module")
def model(exported_dir):
    model = ORTModelForCausalLM.from_pretrained(exported_dir("bundled"))
    assert model.config.max_position_embeddings == CONTEXT
    return model


@pytest.fixture
def no_compute(model, monkeypatch):
    """Any run of the session fails the test: the refusal must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the session ran before the length was checked")

    for name in ("run", "run_with_ort_values", "run_with_iobinding"):
        monkeypatch.setattr(model.session, name, refuse, raising=False)


def test_generate_refuses_a_prompt_past_the_context(model, no_compute):
    ids = np.full((1, 262), 5, np.int64)
    with pytest.raises(InvalidArgumentError, match=MESSAGE) as info:
        model.generate(ids, max_new_tokens=10)
    assert "\n" not in str(info.value)


def test_forward_refuses_past_plus_new_over_the_context(model, no_compute):
    pasts = [np.zeros((1, model.io.num_kv_heads, 262, model.io.head_dim), np.float32) for _ in model.io.cache]
    with pytest.raises(InvalidArgumentError, match=r"need 272 positions but the model's context is 256"):
        model(np.full((1, 10), 5, np.int64), past_key_values=tuple(pasts))


def test_pipeline_refuses_a_long_prompt(model, no_compute):
    pipe = pipeline("text-generation", model=model, tokenizer=str(model.folder))
    text = "a" * 300  # the bundled byte-level tokenizer: > 256 tokens
    with pytest.raises(InvalidArgumentError, match=r"positions but the model's context is 256"):
        pipe(text, max_new_tokens=4)


def test_invalid_max_new_tokens_is_one_line(model, no_compute):
    with pytest.raises(InvalidArgumentError, match=r"^max_new_tokens must be a positive integer, got -1\.$"):
        model.generate([[1, 2, 3]], max_new_tokens=-1)


def test_exactly_the_context_is_accepted(model):
    out = model.generate(np.full((1, 250), 5, np.int64), max_new_tokens=6, min_new_tokens=6)
    assert out.shape == (1, CONTEXT)
