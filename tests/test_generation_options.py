"""Generation options beyond plain greedy/beam, on the committed tiny Llama: sampling, logits
processors and stopping criteria against transformers, streaming, per-row finishing, bad input."""

from __future__ import annotations

import threading

import onnx
import onnx_ir as ir
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

from optimum_onnx23.errors import InvalidArgumentError, ModelNotFoundError, UnsafeModelFileError
from optimum_onnx23.pipelines import ORTModelForCausalLM

PROMPTS = ["ONNX is", "The exporter writes a folder with", "a"]


@pytest.fixture(scope="module")
def folder(exported_dir):
    return exported_dir("bundled")


@pytest.fixture(scope="module")
def model(folder):
    return ORTModelForCausalLM.from_pretrained(folder)


@pytest.fixture(scope="module")
def reference():
    from tiny_models import BUNDLED

    return AutoModelForCausalLM.from_pretrained(BUNDLED).eval()


@pytest.fixture(scope="module")
def tokenizer(folder):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return tokenizer


def _batch(tokenizer, prompts=PROMPTS):
    return tokenizer(prompts, return_tensors="pt", padding=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(repetition_penalty=1.3),
        dict(min_new_tokens=6, eos_token_id=[2, 13, 20]),
        dict(eos_token_id=[2, 13, 20, 33, 70]),  # several rows stop early: pad_token_id afterwards
        dict(num_beams=3, length_penalty=0.5, early_stopping=True, eos_token_id=[2, 13]),
        dict(num_beams=4, num_return_sequences=4, early_stopping="never", repetition_penalty=1.2),
    ],
    ids=["repetition", "min_new_tokens", "eos_list", "beam_early_stop", "beam_never"],
)
def test_options_match_transformers(model, reference, tokenizer, kwargs):
    inputs = _batch(tokenizer)
    expected = reference.generate(**inputs, max_new_tokens=12, do_sample=False, **kwargs)
    got = model.generate(**inputs, max_new_tokens=12, do_sample=False, **kwargs)
    assert torch.equal(got, expected), f"{got.tolist()} != {expected.tolist()}"


@pytest.mark.parametrize("length", ["min_new_tokens", "min_length"])
def test_min_length_holds_back_the_eos_greedy_would_pick(model, reference, tokenizer, length):
    inputs = _batch(tokenizer)
    prompt_len = inputs["input_ids"].shape[1]
    eos = int(model.generate(**inputs, max_new_tokens=1)[0, prompt_len])  # row 0's greedy first token
    kwargs = {"min_new_tokens": 4} if length == "min_new_tokens" else {"min_length": prompt_len + 4}
    threads = torch.get_num_threads()
    got = model.generate(**inputs, max_new_tokens=8, eos_token_id=eos, pad_token_id=3, **kwargs)
    assert torch.get_num_threads() == threads  # the decode loop's single-threaded torch is undone
    expected = reference.generate(**inputs, max_new_tokens=8, eos_token_id=eos, pad_token_id=3, do_sample=False, **kwargs)
    assert torch.equal(got, expected), f"{got.tolist()} != {expected.tolist()}"
    assert eos not in got[0, prompt_len : prompt_len + 4].tolist()


def test_rows_finish_early_and_are_padded(model, tokenizer):
    inputs = _batch(tokenizer)
    free = model.generate(**inputs, max_new_tokens=12)
    stop = int(free[0, inputs["input_ids"].shape[1] + 2])  # row 0's third new token
    got = model.generate(**inputs, max_new_tokens=12, eos_token_id=stop, pad_token_id=3)
    prompt_len = inputs["input_ids"].shape[1]
    row0 = got[0, prompt_len:].tolist()
    first = row0.index(stop)
    assert first <= 2 and all(t == 3 for t in row0[first + 1 :])


def test_stop_strings_match_transformers(model, reference, tokenizer):
    inputs = _batch(tokenizer, PROMPTS[:1])
    kwargs = dict(max_new_tokens=20, do_sample=False, stop_strings=["format"], tokenizer=tokenizer)
    expected = reference.generate(**inputs, **kwargs)
    got = model.generate(**inputs, **kwargs)
    assert torch.equal(got, expected)
    assert tokenizer.decode(got[0]).endswith("format")


def test_sampling_top_k_1_is_greedy_and_seed_reproduces(model, tokenizer):
    inputs = _batch(tokenizer)
    greedy = model.generate(**inputs, max_new_tokens=12)
    torch.manual_seed(123)
    top1 = model.generate(**inputs, max_new_tokens=12, do_sample=True, top_k=1)
    assert torch.equal(top1, greedy)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model.generate(**inputs, max_new_tokens=16, do_sample=True, temperature=1.5, top_k=50, top_p=0.95))
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(8)
    other = model.generate(**inputs, max_new_tokens=16, do_sample=True, temperature=1.5, top_k=50, top_p=0.95)
    assert not torch.equal(other, runs[0])  # sampling really samples


def test_sampling_matches_transformers_under_same_seed(model, reference, tokenizer):
    inputs = _batch(tokenizer, PROMPTS[:1])
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=20, top_p=0.9)
    torch.manual_seed(0)
    expected = reference.generate(**inputs, **kwargs)
    torch.manual_seed(0)
    got = model.generate(**inputs, **kwargs)
    assert torch.equal(got, expected)


def test_text_iterator_streamer_streams_the_generated_text(model, tokenizer):
    inputs = _batch(tokenizer, PROMPTS[:1])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(ids=model.generate(**inputs, max_new_tokens=15, streamer=streamer)))
    thread.start()
    chunks = list(streamer)
    thread.join()
    prompt_len = inputs["input_ids"].shape[1]
    assert "".join(chunks) == tokenizer.decode(result["ids"][0, prompt_len:], skip_special_tokens=True)
    assert len(chunks) > 1


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(num_beams=0), "num_beams"),
        (dict(do_sample=True, top_p=0.0), "top_p"),
        (dict(do_sample=True, top_p=1.5), "top_p"),
        (dict(max_new_tokens=4, no_such_option=1), "no_such_option"),
    ],
)
def test_bad_generation_arguments(model, tokenizer, kwargs, words):
    inputs = _batch(tokenizer, PROMPTS[:1])
    with pytest.raises(InvalidArgumentError, match=words) as info:
        model.generate(**inputs, **kwargs)
    assert "\n" not in str(info.value)


def test_empty_prompt(model):
    with pytest.raises(InvalidArgumentError, match="empty"):
        model.generate(input_ids=torch.zeros((1, 0), dtype=torch.long), max_new_tokens=4)


def test_folder_without_onnx(tmp_path, folder):
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ModelNotFoundError, match="no ONNX model"):
        ORTModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ORTModelForCausalLM.from_pretrained(tmp_path / "missing" / "folder")


def _copy_side_files(source, target):
    for name in ("config.json", "generation_config.json"):
        (target / name).write_text((source / name).read_text())


def test_external_data_outside_the_folder_is_refused(tmp_path, folder):
    model = ir.load(folder / "model.onnx")
    outside = tmp_path / "outside"
    inside = tmp_path / "model"
    outside.mkdir()
    inside.mkdir()
    ir.save(model, outside / "model.onnx", external_data="weights.bin")
    # A model in `inside` whose tensors point at ../outside/weights.bin
    proto = onnx.load(str(outside / "model.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside/weights.bin"
    onnx.save(proto, str(inside / "model.onnx"))
    _copy_side_files(folder, inside)
    with pytest.raises(UnsafeModelFileError, match="outside its folder") as info:
        ORTModelForCausalLM.from_pretrained(inside)
    assert "\n" not in str(info.value)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str(outside / "weights.bin")  # absolute
    onnx.save(proto, str(inside / "model.onnx"))
    with pytest.raises(UnsafeModelFileError, match="outside its folder"):
        ORTModelForCausalLM.from_pretrained(inside)


def test_corrupt_onnx_file(tmp_path, folder):
    _copy_side_files(folder, tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(UnsafeModelFileError, match="not a readable ONNX model") as info:
        ORTModelForCausalLM.from_pretrained(tmp_path)
    assert "\n" not in str(info.value)


def test_export_without_past_is_refused_with_the_fix(exported_dir):
    """`--task text-generation` graphs have no KV cache: generation would recompute the whole
    sequence every step, so the loader refuses them in one line that names the export to make."""
    from optimum_onnx23 import pipeline

    folder = exported_dir("llama", "--task", "text-generation")
    message = (
        f"{folder / 'model.onnx'} is not a decoder exported with a KV cache (no past_key_values.* inputs); export it "
        "with `optimum-cli export onnx --dynamo --task text-generation-with-past`."
    )
    with pytest.raises(UnsafeModelFileError) as info:
        ORTModelForCausalLM.from_pretrained(folder)
    assert str(info.value) == message
    with pytest.raises(UnsafeModelFileError) as info:
        pipeline("text-generation", model=folder, accelerator="ort")
    assert str(info.value) == message


def test_hub_layout_folder(tmp_path, folder, model, tokenizer):
    """transformers.js' layout: ONNX under onnx/, config and tokenizer at the root."""
    import shutil

    (tmp_path / "onnx").mkdir()
    for path in folder.iterdir():
        target = tmp_path / "onnx" if path.name.startswith("model.onnx") else tmp_path
        shutil.copy(path, target / path.name)
    hub_model = ORTModelForCausalLM.from_pretrained(tmp_path)
    assert hub_model.model_path == tmp_path / "onnx" / "model.onnx"
    inputs = _batch(tokenizer)
    assert torch.equal(hub_model.generate(**inputs, max_new_tokens=6), model.generate(**inputs, max_new_tokens=6))


def test_hub_id_from_local_cache(tmp_path, folder, model, tokenizer):
    """A Hub id resolves through huggingface_hub's cache (Hub layout, no network)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--tiny-onnx"
    snapshot = repo / "snapshots" / commit
    (snapshot / "onnx").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for path in folder.iterdir():
        shutil.copy(path, (snapshot / "onnx" if path.name.startswith("model.onnx") else snapshot) / path.name)
    hub_model = ORTModelForCausalLM.from_pretrained("acme/tiny-onnx", cache_dir=tmp_path, local_files_only=True)
    assert hub_model.model_path.parent.name == "onnx"
    inputs = _batch(tokenizer)
    assert torch.equal(hub_model.generate(**inputs, max_new_tokens=6), model.generate(**inputs, max_new_tokens=6))
    with pytest.raises(ModelNotFoundError, match="acme/missing") as info:
        ORTModelForCausalLM.from_pretrained("acme/missing", cache_dir=tmp_path, local_files_only=True)
    assert "\n" not in str(info.value)


def test_sampling_several_sequences_match_transformers(model, reference, tokenizer):
    inputs = _batch(tokenizer)
    kwargs = dict(max_new_tokens=8, do_sample=True, top_k=30, num_return_sequences=3)
    torch.manual_seed(3)
    expected = reference.generate(**inputs, **kwargs)
    torch.manual_seed(3)
    got = model.generate(**inputs, **kwargs)
    assert got.shape[0] == 9 and torch.equal(got, expected)


def test_text_streamer_prints_the_generated_text(model, tokenizer, capsys):
    from transformers import TextStreamer

    inputs = _batch(tokenizer, PROMPTS[:1])
    ids = model.generate(**inputs, max_new_tokens=12, streamer=TextStreamer(tokenizer, skip_prompt=True))
    printed = capsys.readouterr().out
    new_text = tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert printed.strip() == new_text.strip() and new_text.strip()
