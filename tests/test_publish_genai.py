"""onnxruntime-genai runs the pushed folder (Hub layout + genai_config.json) as it is, token for token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from optimum_onnx23.publish import save_pretrained

og = pytest.importorskip(
    "onnxruntime_genai",
    reason="onnxruntime-genai is not installed (pip install onnxruntime-genai==0.18.0; it needs onnxruntime>=1.31)",
)

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def hub_folder(exported_dir, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("genai") / "tiny-llama-onnx23"
    save_pretrained(exported_dir("llama"), target, "onnx-community-test/tiny-llama-onnx23")
    return target


def _og_greedy(folder: Path, prompt: list[int]) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    # min_length = max_length: no early stop at EOS, so the whole sequence is compared.
    params.set_search_options(do_sample=False, max_length=len(prompt) + NEW_TOKENS, min_length=len(prompt) + NEW_TOKENS)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)]


def test_version():
    assert og.__version__.startswith("0.18"), og.__version__


def test_greedy_ids_match_our_pipeline_and_transformers(hub_folder, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    source = tiny_model_dir("llama")
    prompt = AutoTokenizer.from_pretrained(source)("Hello world, this is a test").input_ids
    got = _og_greedy(hub_folder, prompt)

    ids = torch.tensor([prompt])
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    ours = ORTModelForCausalLM.from_pretrained(hub_folder).generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    with torch.no_grad():
        expected = reference.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert len(got) == len(prompt) + NEW_TOKENS
    assert got == expected[0].tolist()
    assert got == np.asarray(ours)[0].tolist()


def test_genai_tokenizer_reads_the_root_tokenizer_files(hub_folder, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = og.Tokenizer(og.Model(str(hub_folder)))
    reference = AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    text = "Hello world, this is a test"
    # onnxruntime-genai leaves the BOS to the caller; the rest of the ids are the same.
    assert [int(t) for t in tokenizer.encode(text)] == reference(text, add_special_tokens=False).input_ids
