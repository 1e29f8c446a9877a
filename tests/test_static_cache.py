"""Static-cache exports (`--cache static --max-cache-len N`): TensorScatter writes the fixed KV
buffers in place, generation matches the dynamic cache token for token, no KV copy is made."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from architecture_records import record
from conftest import run_optimum_cli
from transformers import AutoTokenizer

from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.pipelines import ORTModelForCausalLM

MAX_CACHE_LEN = 48
PROMPTS = ["ONNX is", "The tiny model reads a much longer prompt than the others", "Hi"]
# llama: GQA + rope, also exported with last-position logits; gemma2: softcap + sliding window;
# gpt2: learned positions, no rope. One family per other attention and cache kind: bloom (ALiBi in
# the mask), minicpm3 (MLA's latent cache, keys and values of different sizes), gpt_bigcode
# (multi-query, learned positions), falcon (eager multi-query, parallel block), gptj (interleaved
# partial rotary on [B, S, H, D]), phi (partial rotary, LayerNorm), cohere2 (sliding layers with
# rotary, full layers without), gemma3 (a multimodal checkpoint's text decoder), glm (interleaved
# partial rotary on [B, H, S, D]).
CASES = {
    "llama": ("--logits", "last"), "gemma2": (), "gpt2": (), "bloom": (), "minicpm3": (), "gpt_bigcode": (),
    "falcon": (), "gptj": (), "phi": (), "cohere2": (), "gemma3": (), "glm": (),
}
LATENT_CACHE = {"minicpm3"}
COPY_WARNING = "in-place optimization not activated"


def _static(exported_dir, model_type):
    return exported_dir(model_type, "--cache", "static", "--max-cache-len", str(MAX_CACHE_LEN), *CASES[model_type])


def _encode(folder, prompts=PROMPTS):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_static_matches_dynamic(model_type, exported_dir, capfd):
    static_dir = _static(exported_dir, model_type)
    dynamic = ORTModelForCausalLM.from_pretrained(exported_dir(model_type))
    static = ORTModelForCausalLM.from_pretrained(static_dir)
    assert static.io.static and static.io.max_cache_len == MAX_CACHE_LEN and not dynamic.io.static
    assert static.io.logits_last_only == ("last" in CASES[model_type])

    graph = onnx.load(str(static_dir / "model.onnx"), load_external_data=False)
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("TensorScatter") == 2 * static.io.num_layers
    # Every cache write is a TensorScatter: no other scatter reads a past buffer (minicpm3 keeps
    # ScatterNDs of its own, assembling each step's keys from the latent, not writing the cache).
    scatters = [node for node in graph.graph.node if node.op_type in ("ScatterElements", "ScatterND")]
    assert not [node.name for node in scatters if node.input[0].startswith("past_key_values.")]
    assert model_type in LATENT_CACHE or not scatters
    assert {o.domain: o.version for o in graph.opset_import}[""] == 24
    assert {p.key: p.value for p in graph.metadata_props}["optimum_onnx23.cache"] == "static"
    # Attention reads the written buffers themselves: no repeat_kv copy of the kv heads in between.
    producer = {output: node.op_type for node in graph.graph.node for output in node.output}
    # (MLA caches a latent that kv_b_proj expands into the keys and values Attention reads.)
    attention = [node for node in graph.graph.node if node.op_type == "Attention"]
    assert attention and (
        model_type in LATENT_CACHE or all(producer[node.input[i]] == "TensorScatter" for node in attention for i in (1, 2))
    )

    inputs = _encode(static_dir)
    capfd.readouterr()
    for kwargs in (dict(max_new_tokens=12), dict(max_new_tokens=8, num_beams=4, num_return_sequences=2)):
        expected = dynamic.generate(**inputs, **kwargs)
        got = static.generate(**inputs, **kwargs)
        assert torch.equal(got, expected), f"{model_type} {kwargs}"
    assert COPY_WARNING not in capfd.readouterr().err  # onnxruntime logs a warning for every KV copy
    record(model_type, "static_cache")


def test_cache_buffers_are_written_in_place(exported_dir, capfd):
    static = ORTModelForCausalLM.from_pretrained(_static(exported_dir, "llama"))
    state = static.new_state(batch_size=2)
    pointers = [value.data_ptr() for value in state.cache.values]
    capfd.readouterr()
    state.step(np.array([[5, 6, 7], [8, 9, 10]]))
    for token in (11, 12, 13):
        state.step(np.array([[token], [token]]))
    assert [value.data_ptr() for value in state.cache.values] == pointers
    assert state.cache.length == 6
    key = state.cache.values[0].numpy()
    assert np.abs(key[:, :, :6]).sum() > 0 and not key[:, :, 6:].any()  # written slots only
    assert COPY_WARNING not in capfd.readouterr().err

    # Control: the same graph run without binding the buffers in place does copy, and says so.
    session = ort.InferenceSession(str(static.model_path), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": np.array([[5]]),
        "attention_mask": np.eye(1, MAX_CACHE_LEN, dtype=np.int64),
        "position_ids": np.array([[0]]),
        "write_indices": np.array([0]),
    }
    shape = (1, static.io.num_kv_heads, MAX_CACHE_LEN, static.io.head_dim)
    feeds.update({name: np.zeros(shape, np.float32) for name in static.io.past_names()})
    session.run(None, feeds)
    assert COPY_WARNING in capfd.readouterr().err


def test_cache_too_small_is_refused_before_any_work(exported_dir):
    static = ORTModelForCausalLM.from_pretrained(_static(exported_dir, "llama"))
    inputs = _encode(static.folder)
    length = inputs["input_ids"].shape[1]
    with pytest.raises(InvalidArgumentError, match=f"holds {MAX_CACHE_LEN}") as info:
        static.generate(**inputs, max_new_tokens=MAX_CACHE_LEN - length + 1)
    assert "--max-cache-len" in str(info.value) and "\n" not in str(info.value)
    static.generate(**inputs, max_new_tokens=MAX_CACHE_LEN - length)  # exactly full is fine


@pytest.mark.parametrize(
    "args, words",
    [
        (("--cache", "static"), "--max-cache-len"),
        (("--max-cache-len", "64"), "--cache static"),
        (("--cache", "static", "--max-cache-len", "4"), "N >= 16"),
        (("--cache", "static", "--max-cache-len", "64", "--task", "text-generation"), "text-generation-with-past"),
    ],
)
def test_bad_static_arguments(tmp_path, capsys, args, words):
    from tiny_models import BUNDLED

    code = run_optimum_cli("export", "onnx", "--dynamo", "--model", BUNDLED, *args, tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and words in err[-1] and err[-1].startswith("error:")
    assert not (tmp_path / "out").exists()
