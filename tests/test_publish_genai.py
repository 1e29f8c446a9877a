"""onnxruntime-genai runs the pushed repo (Hub layout + genai_config.json), as `snapshot_download` leaves it, token for token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from architecture_records import record
from huggingface_hub import snapshot_download
from test_publish_hub import REPO_ID, fake_hub  # noqa: F401  (fixture)

from optimum_onnx23.publish import push_to_hub

try:
    import onnxruntime_genai as og
except ImportError:  # a skip, and under CI=true a failure (conftest): test.sh installs it
    og = None
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        og is None, reason="onnxruntime-genai is not installed (pip install onnxruntime-genai==0.18.0; it needs onnxruntime>=1.31)"
    ),
]

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


def test_batch_greedy_ids_match_transformers(hub_folder, tiny_model_dir):
    """Batch 3. onnxruntime-genai 0.18 takes no attention mask and, with append_tokens, does not
    derive one from the pad token (see the next test), so the prompts have equal lengths; one holds
    the pad token's id as a real token."""
    from transformers import AutoModelForCausalLM

    prompts = np.array([[1, 45, 300, 12, 9, 77, 31], [1, 5, 6, 7, 300, 301, 9], [1, 200, 3, 8, 100, 11, 250]], np.int32)
    model = og.Model(str(hub_folder))
    params = og.GeneratorParams(model)
    length = prompts.shape[1] + NEW_TOKENS
    params.set_search_options(do_sample=False, max_length=length, min_length=length, batch_size=len(prompts))
    generator = og.Generator(model, params)
    generator.append_tokens(prompts)
    while not generator.is_done():
        generator.generate_next_token()
    got = [[int(t) for t in generator.get_sequence(i)] for i in range(len(prompts))]
    ids = torch.tensor(prompts, dtype=torch.long)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    with torch.no_grad():
        expected = reference.generate(ids, attention_mask=torch.ones_like(ids), **_GREEDY)
    assert got == expected.tolist()
    assert len({row[-1] for row in got}) > 1  # the rows did not all generate the same


def test_left_padding_is_not_supported_by_onnxruntime_genai_0_18(hub_folder):
    """Measured, so that a release that supports it is noticed: 0.18's append_tokens feeds a mask
    of ones and positions 0..n-1 to every row, left padding (the pad token of genai_config.json)
    included; padded rows then attend to their pads. Our card shows single-prompt usage only."""
    import json

    pad = json.loads((hub_folder / "genai_config.json").read_text())["model"]["pad_token_id"]
    prompts = np.array([[1, 45, 300, 12, 9], [pad, pad, pad, 1, 46]], np.int32)
    model = og.Model(str(hub_folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=8, batch_size=2)
    generator = og.Generator(model, params)
    generator.append_tokens(prompts)
    assert np.asarray(generator.get_input("attention_mask")).tolist() == [[1] * 5, [1] * 5]
    assert np.asarray(generator.get_input("position_ids")).tolist() == [list(range(5))] * 2
