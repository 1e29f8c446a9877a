"""Generation on folders exported with a backend variant attached (`--variant ort-cpu-int4`): on
CPU the int4 variant is the one that runs, so greedy and beam search with a filled cache and left
padding are checked against transformers' own generate() driving the same variant without a cache
(every step recomputes the whole sequence), for the dynamic and the static cache, through
ORTModelForCausalLM and pipeline(); then the fallback to the main graph when the variant cannot run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_outputs import CausalLMOutputWithPast

from optimum_onnx23 import pipeline
from optimum_onnx23.pipelines import ORTModelForCausalLM
from optimum_onnx23.variants import select_for_providers

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")
PROMPTS = ["ONNX is", "The tiny model reads a much longer prompt than the others", "Hi"]
VARIANT = ("--variant", "ort-cpu-int4")
STATIC = ("--cache", "static", "--max-cache-len", "48")
CASES = {
    "greedy": dict(max_new_tokens=12),
    "beam": dict(max_new_tokens=8, num_beams=4, num_return_sequences=2),
}
USING_INT4 = "Using backend variant ort-cpu-int4 for CPUExecutionProvider"


@pytest.fixture(scope="module")
def dynamic_dir(exported_dir):
    return exported_dir("llama", *VARIANT)


@pytest.fixture(scope="module")
def inputs(dynamic_dir):
    tokenizer = AutoTokenizer.from_pretrained(dynamic_dir, padding_side="left")
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert encoded["attention_mask"][:, 0].tolist().count(0) == 2  # rows really are padded
    return encoded


def _load(folder, caplog) -> ORTModelForCausalLM:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="optimum_onnx23.variants"):
        model = ORTModelForCausalLM.from_pretrained(folder)
    assert USING_INT4 in caplog.text, caplog.text
    return model


def _whole_sequence_logits(model: ORTModelForCausalLM, input_ids, attention_mask) -> torch.Tensor:
    """`model`'s session (the variant it selected) run on the whole sequence with an empty cache.
    Static exports take their zero buffers, written from slot 0, the mask padded to the buffer."""
    if not model.io.static:
        return model(input_ids, attention_mask=attention_mask, use_cache=False).logits
    ids = input_ids.numpy()
    batch, length = ids.shape
    slots = model.io.max_cache_len
    mask = np.zeros((batch, slots), np.int64)
    mask[:, :length] = attention_mask.numpy()
    feeds = {"input_ids": ids, "attention_mask": mask, "write_indices": np.zeros(batch, np.int64)}
    if model.io.has_position_ids:
        feeds["position_ids"] = np.ascontiguousarray(np.broadcast_to(np.arange(length), (batch, length)))
    shapes = model.io.cache_shapes(batch, slots)
    feeds.update((name, np.zeros(shape, model.io.dtype)) for name, shape in zip(model.io.past_names(), shapes))
    return torch.from_numpy(model.session.run(["logits"], feeds)[0])


def no_cache_reference(model: ORTModelForCausalLM):
    """transformers' generate() on a model whose forward is `model`'s onnxruntime session run on the
    whole sequence with an empty cache: transformers' decoding and padding logic, none of ours."""
    config = AutoConfig.from_pretrained(model.folder)
    reference = AutoModelForCausalLM.from_config(config).eval()

    class OnnxWithoutCache(type(reference)):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return CausalLMOutputWithPast(logits=_whole_sequence_logits(model, input_ids, attention_mask))

    reference.__class__ = OnnxWithoutCache
    reference.generation_config = model.generation_config
    return reference


def _plain_logits(selected, ids) -> np.ndarray:
    session = selected.session(["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return session.run(["logits"], feeds)[0]


def test_the_int4_variant_is_what_runs(dynamic_dir, caplog):
    model = _load(dynamic_dir, caplog)
    ids = np.array([[1, 45, 300, 12, 9, 77]], np.int64)
    logits = model(ids).logits
    int4, chosen = select_for_providers(dynamic_dir / "model.onnx", ["CPUExecutionProvider"])
    main, _ = select_for_providers(dynamic_dir / "model.onnx", ["CPUExecutionProvider"], variant="main")
    assert chosen == "ort-cpu-int4"
    assert np.array_equal(logits, _plain_logits(int4, ids))
    assert np.abs(logits - _plain_logits(main, ids)).max() > 1e-3  # not the fp32 main graph


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_with_the_variant_matches_transformers_without_cache(exported_dir, dynamic_dir, inputs, caplog, cache, case):
    # The static export's int4 weights are calibrated on windows cut to its 48 slots, so they differ
    # from the dynamic export's: each is compared with its own variant run without a cache.
    model = _load(dynamic_dir if cache == "dynamic" else exported_dir("llama", *STATIC, *VARIANT), caplog)
    assert model.io.static == (cache == "static")
    reference = no_cache_reference(model)
    kwargs = CASES[case]
    expected = reference.generate(**inputs, do_sample=False, use_cache=False, **kwargs)
    got = model.generate(**inputs, **kwargs)
    assert torch.equal(got, expected), f"{cache} {case}: {got.tolist()} != {expected.tolist()}"
    assert len(set(got[:, inputs["input_ids"].shape[1] :].flatten().tolist())) > 2


def test_pipeline_with_the_variant(dynamic_dir, caplog):
    from transformers import pipeline as transformers_pipeline

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="optimum_onnx23.variants"):
        ours = pipeline("text-generation", model=dynamic_dir, accelerator="ort")
    assert USING_INT4 in caplog.text
    theirs = transformers_pipeline("text-generation", model=no_cache_reference(ours.model), tokenizer=str(dynamic_dir))
    theirs.tokenizer.padding_side = "left"
    for prompts, kwargs in ((PROMPTS, dict(batch_size=3)), ("ONNX is", dict(num_beams=3, num_return_sequences=2))):
        got = ours(prompts, max_new_tokens=10, do_sample=False, **kwargs)
        expected = theirs(prompts, max_new_tokens=10, do_sample=False, use_cache=False, **kwargs)
        assert got == expected


def test_falls_back_to_the_main_graph_when_the_variant_cannot_run(dynamic_dir, tiny_model_dir, inputs, monkeypatch):
    """An onnxruntime build without MatMulNBits (simulated by hiding its kernel from the registry
    the runtime consults): the session warns and runs the main graph, which is transformers' model."""
    from optimum_onnx23.variants import runtime

    kernels = runtime._kernels()
    without = {provider: {k for k in ops if k != ("com.microsoft", "MatMulNBits")} for provider, ops in kernels.items()}
    monkeypatch.setattr(runtime, "_kernels", lambda: without)
    with pytest.warns(UserWarning, match=r"Variant ort-cpu-int4 needs com\.microsoft::MatMulNBits.*using the main graph"):
        model = ORTModelForCausalLM.from_pretrained(dynamic_dir)
    transformers_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    for kwargs in CASES.values():
        expected = transformers_model.generate(**inputs, do_sample=False, **kwargs)
        assert torch.equal(model.generate(**inputs, **kwargs), expected), kwargs
