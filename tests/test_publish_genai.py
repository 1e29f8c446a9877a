"""onnxruntime-genai runs the pushed repo (Hub layout + genai_config.json), as `snapshot_download` leaves it, token for token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from architecture_records import record

from huggingface_hub import snapshot_download

from optimum_onnx23.publish import push_to_hub
from test_publish_hub import REPO_ID, fake_hub  # noqa: F401  (fixture)

og = pytest.importorskip(
    "onnxruntime_genai",
    reason="onnxruntime-genai is not installed (pip install onnxruntime-genai==0.18.0; it needs onnxruntime>=1.31)",
)

NEW_TOKENS = 16


@pytest.fixture
def pushed(fake_hub, exported_dir, tmp_path):
    """pushed(model_type) -> the repo pushed to the in-memory Hub and downloaded back into a Hub cache (symlinks to blobs)."""

    def make(model_type: str) -> Path:
        repo_id = f"{REPO_ID}-{model_type}"
        push_to_hub(exported_dir(model_type), repo_id)
        return Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache"))

    return make


@pytest.fixture
def hub_folder(pushed) -> Path:
    return pushed("llama")


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


def _prompt(tiny_model_dir, model_type: str = "llama") -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir(model_type))("Hello world, this is a test").input_ids


_GREEDY = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)


# llama: rotary positions, GQA; gpt2: learned positions, and a model type 0.18 must not be told.
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_greedy_ids_match_transformers(pushed, tiny_model_dir, model_type):
    from transformers import AutoModelForCausalLM

    prompt = _prompt(tiny_model_dir, model_type)
    got = _og_greedy(pushed(model_type), prompt)
    ids = torch.tensor([prompt])
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir(model_type)).eval()
    with torch.no_grad():
        expected = reference.generate(ids, attention_mask=torch.ones_like(ids), **_GREEDY)
    assert len(got) == len(prompt) + NEW_TOKENS
    assert got == expected[0].tolist()
    record(model_type, "onnxruntime_genai")


def test_greedy_ids_match_our_pipeline(hub_folder, tiny_model_dir):
    from optimum_onnx23.pipelines import ORTModelForCausalLM

    prompt = _prompt(tiny_model_dir)
    ids = torch.tensor([prompt])
    ours = ORTModelForCausalLM.from_pretrained(hub_folder).generate(ids, attention_mask=torch.ones_like(ids), **_GREEDY)
    assert _og_greedy(hub_folder, prompt) == np.asarray(ours)[0].tolist()


def test_genai_tokenizer_reads_the_root_tokenizer_files(hub_folder, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = og.Tokenizer(og.Model(str(hub_folder)))
    reference = AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    text = "Hello world, this is a test"
    # onnxruntime-genai leaves the BOS to the caller; the rest of the ids are the same.
    assert [int(t) for t in tokenizer.encode(text)] == reference(text, add_special_tokens=False).input_ids
