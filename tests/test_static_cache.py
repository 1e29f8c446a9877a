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


def _record_presents(state) -> list[list[int]]:
    """Addresses of the present.* OrtValues onnxruntime returns from each step of `state`, as it
    reports them (before the cache's own bookkeeping sees them)."""
    seen: list[list[int]] = []
    update = state.cache.update

    def recording_update(presents, step_length):
        seen.append([value.data_ptr() for value in presents])
        return update(presents, step_length)

    state.cache.update = recording_update
    return seen


def test_cache_buffers_are_written_in_place(exported_dir, capfd):
    static = ORTModelForCausalLM.from_pretrained(_static(exported_dir, "llama"))
    state = static.new_state(batch_size=2)
    buffers = [value.data_ptr() for value in state.cache.values]
    presents = _record_presents(state)
    capfd.readouterr()
    state.step(np.array([[5, 6, 7], [8, 9, 10]]))
    for token in (11, 12, 13):
        state.step(np.array([[token], [token]]))
    # onnxruntime wrote every step's presents into the buffers bound as the pasts: a copy would
    # have returned presents at other addresses (an output allocated by onnxruntime).
    assert presents == [buffers] * 4
    assert [value.data_ptr() for value in state.cache.values] == buffers  # and the cache keeps them
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


def test_static_cache_copies_only_for_beam_reordering(exported_dir, monkeypatch, capfd):
    """What README says is copied: greedy decoding copies no KV byte; beam search reorders the
    buffers once per step with a Gather on the device (a copy of all max_cache_len positions),
    and each step then writes into the reordered buffers in place."""
    from optimum_onnx23.pipelines import kv_cache

    gathers: list[tuple[list[int], list[int]]] = []  # (input addresses, output addresses) per Gather
    original = kv_cache._Reorderer.__call__

    def recording_call(self, values, beam_idx):
        outputs = original(self, values, beam_idx)
        gathers.append(([v.data_ptr() for v in values], [v.data_ptr() for v in outputs]))
        return outputs

    monkeypatch.setattr(kv_cache._Reorderer, "__call__", recording_call)
    states = []
    new_state = ORTModelForCausalLM.new_state

    def recording_new_state(self, batch_size):
        state = new_state(self, batch_size)
        states.append((state, _record_presents(state)))
        return state

    monkeypatch.setattr(ORTModelForCausalLM, "new_state", recording_new_state)
    static = ORTModelForCausalLM.from_pretrained(_static(exported_dir, "llama"))
    inputs = _encode(static.folder)
    capfd.readouterr()

    static.generate(**inputs, max_new_tokens=8)
    (state, presents), = states
    assert gathers == [] and presents == [presents[0]] * 8  # greedy: the same buffers at every step

    states.clear()
    new_tokens = 8
    static.generate(**inputs, max_new_tokens=new_tokens, num_beams=4, num_return_sequences=2, early_stopping="never")
    (state, presents), = states
    # Steps: the prefill, then new_tokens - 1 decoding steps. Gathers: one expands the prompts'
    # cache to the beams, then one reorders it before each decoding step (none is skipped here:
    # an unchanged beam order would skip it).
    assert len(presents) == new_tokens and len(gathers) == new_tokens
    assert gathers[0][0] == presents[0] and gathers[1][0] == gathers[0][1]
    for step in range(1, new_tokens):
        inputs_at, outputs_at = gathers[step]
        assert not set(outputs_at) & set(inputs_at)  # a Gather writes new buffers: the copy
        assert presents[step] == outputs_at  # the step then writes in place into them
        if step > 1:
            assert inputs_at == presents[step - 1]  # and the next Gather copies those
    assert COPY_WARNING not in capfd.readouterr().err
    rows, = {v.shape()[0] for v in state.cache.values}
    assert rows == 3 * 4 and state.cache.values[0].shape()[2] == MAX_CACHE_LEN  # whole buffers, every step


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
