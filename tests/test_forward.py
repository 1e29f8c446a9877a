"""`ORTModelForCausalLM.forward` / `__call__` on the bundled checkpoint: transformers' logits and
cache, every cache form in, numpy in -> numpy out, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import BUNDLED
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from optimum_onnx23 import ORTModelForCausalLM
from optimum_onnx23.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def models(exported_dir):
    theirs = AutoModelForCausalLM.from_pretrained(BUNDLED).eval()
    ours = ORTModelForCausalLM.from_pretrained(exported_dir("bundled"))
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED)
    tokenizer.padding_side = "left"
    inputs = tokenizer(["ONNX is an open format", "Hi"], return_tensors="pt", padding=True)
    return ours, theirs, inputs


def test_forward_matches_transformers_with_padding(models):
    ours, theirs, inputs = models
    with torch.no_grad():
        expected = theirs(**inputs)
    got = ours(**inputs)
    mask = inputs["attention_mask"].bool()
    assert isinstance(got.logits, torch.Tensor) and got.logits.dtype == torch.float32
    torch.testing.assert_close(got.logits[mask], expected.logits[mask], atol=1e-4, rtol=1e-4)
    assert isinstance(got.cache, DynamicCache) and len(got.cache.layers) == 2
    for mine, reference in zip(got.cache.layers, expected.cache.layers):
        torch.testing.assert_close(mine.keys, reference.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mine.values, reference.values, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("form", ["cache", "past_key_values_pairs", "flat_numpy"])
def test_every_cache_form_continues_the_sequence(models, form):
    ours, theirs, inputs = models
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        expected = theirs(**inputs).logits[:, 3:]
    first = ours(input_ids=ids[:, :3], attention_mask=mask[:, :3])
    pairs = tuple((layer.keys, layer.values) for layer in first.cache.layers)
    if form == "cache":
        second = ours(input_ids=ids[:, 3:], attention_mask=mask, cache=first.cache).logits
    elif form == "past_key_values_pairs":
        second = ours(input_ids=ids[:, 3:], attention_mask=mask, past_key_values=pairs).logits
    else:
        flat = [t.numpy() for pair in pairs for t in pair]
        second = ours(ids[:, 3:].numpy(), attention_mask=mask.numpy(), past_key_values=flat).logits
        assert isinstance(second, np.ndarray)
        second = torch.from_numpy(second)
    valid = mask[:, 3:].bool()
    torch.testing.assert_close(second[valid], expected[valid], atol=1e-4, rtol=1e-4)


def test_use_cache_false_returns_no_cache(models):
    ours, _, inputs = models
    assert ours(**inputs, use_cache=False).cache is None


def test_forward_errors_are_one_line(models):
    ours, _, inputs = models
    ids = inputs["input_ids"]
    first = ours(input_ids=ids)
    with pytest.raises(InvalidArgumentError, match=r"^Pass the cache as `cache` or `past_key_values`, not both\.$"):
        ours(input_ids=ids, cache=first.cache, past_key_values=first.cache)
    with pytest.raises(InvalidArgumentError, match=r"^The cache holds 2 tensors; this model takes 4 \(a key and a value for each of 2 layers\)\.$"):
        ours(input_ids=ids, past_key_values=((first.cache.layers[0].keys, first.cache.layers[0].values),))
    with pytest.raises(InvalidArgumentError, match=r"^attention_mask has shape \(2, 3\); it must cover the past and new positions"):
        ours(input_ids=ids[:, :1], attention_mask=inputs["attention_mask"][:, :3], cache=first.cache)
    with pytest.raises(InvalidArgumentError, match=r"^Unknown forward\(\) argument\(s\): labels\.$"):
        ours(input_ids=ids, labels=ids)
    with pytest.raises(InvalidArgumentError, match=rf"^input_ids must be a \[batch, length\] array, got shape \({ids.shape[1]},\)\.$"):
        ours(input_ids=ids[0])


def test_static_cache_export_points_to_generate(exported_dir):
    model = ORTModelForCausalLM.from_pretrained(exported_dir("bundled", "--cache", "static", "--max-cache-len", "32"))
    with pytest.raises(InvalidArgumentError, match="static cache .* use generate\\(\\) or new_state\\(\\)"):
        model(input_ids=torch.tensor([[1, 2, 3]]))
