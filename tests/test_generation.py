"""Token-for-token parity of ORTModelForCausalLM.generate() with transformers' generate() on the
same weights, for every exported architecture: greedy and beam search, batch 1 and a left-padded
batch of 3 prompts of different lengths."""

from __future__ import annotations

import torch
from architecture_records import record
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23.pipelines import ORTModelForCausalLM

PROMPTS = ["ONNX is", "The tiny model reads a much longer prompt than the others", "Hi"]
NEW_TOKENS = 10


def _encode(folder, prompts):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True)


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
