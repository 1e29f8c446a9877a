"""Token-for-token parity of ORTModelForCausalLM.generate() with transformers' generate() on the
same weights, for every exported architecture: greedy and beam search, batch 1 and a left-padded
batch of 3 prompts of different lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from architecture_records import record
from tiny_models import ARCHITECTURES
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23.pipelines import ORTModelForCausalLM

PROMPTS = ["ONNX is", "The tiny model reads a much longer prompt than the others", "Hi"]
NEW_TOKENS = 10


def _encode(folder, prompts):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True)


# Reversed: test_export.py walks ARCHITECTURES forwards on the other xdist worker, and both share
# one export per architecture; in the same order, one worker would wait on the other's every export.
@pytest.mark.parametrize("model_type", ARCHITECTURES[::-1])
def test_generate_matches_transformers(model_type, tiny_model_dir, exported_dir):
    source = tiny_model_dir(model_type)
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    model = ORTModelForCausalLM.from_pretrained(exported_dir(model_type))
    assert model.io.num_layers == reference.config.get_text_config().num_hidden_layers
    single, batch = _encode(source, PROMPTS[:1]), _encode(source, PROMPTS)
    assert batch["attention_mask"][:, 0].tolist().count(0) == 2  # rows really are padded
    cases = {
        "greedy": dict(max_new_tokens=NEW_TOKENS, do_sample=False),
        "beam": dict(max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=4, num_return_sequences=2),
    }
    seen: set[int] = set()
    for name, kwargs in cases.items():
        for inputs in (single, batch):
            expected = reference.generate(**inputs, **kwargs)
            got = model.generate(**inputs, **kwargs)
            label = f"{model_type} {name} batch={inputs['input_ids'].shape[0]}"
            assert got.dtype == torch.long, label
            assert got.shape == expected.shape, label
            assert torch.equal(got, expected), f"{label}: {got.tolist()} != {expected.tolist()}"
            seen.update(got[:, -NEW_TOKENS:].flatten().tolist())
    # Not a trivial comparison: the new tokens vary across rows and strategies.
    assert len(seen) > 2, seen
    record(model_type, "generate")


def test_cpu_dynamic_cache_steps_without_binding_like_the_bound_path(exported_dir):
    """On CPU a dynamic cache goes through `run_with_ort_values` (no per-name binding); the IO
    binding path (static caches, in-place states, other devices) gives the same logits and cache."""
    model = ORTModelForCausalLM.from_pretrained(exported_dir("bundled"))
    plain, bound = model.new_state(2), model.new_state(2)
    assert plain._plain_run
    bound._plain_run = False
    prefill = (np.array([[5, 6, 7], [3, 8, 9]]), np.array([[1, 1, 1], [0, 1, 1]]))  # left-padded row
    for ids, mask in (prefill, (np.array([[10], [11]]), None), (np.array([[12], [13]]), None)):
        assert torch.equal(plain.step(ids, mask), bound.step(ids, mask))
    assert plain.cache.length == bound.cache.length == 5
    for a, b in zip(plain.cache.values, bound.cache.values):
        assert a.shape() == b.shape() and (a.numpy() == b.numpy()).all()
