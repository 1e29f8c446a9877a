"""KV slots (serving.slot_graph / serving.batch.SlotRows) against the dynamic cache: the same
logits for rows that join, decode side by side at different lengths and leave, on families whose
attention differs (sliding windows, softcaps, q/k norms, MoE), and the rewritten graph itself."""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir
import pytest

from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.pipelines import ORTModelForCausalLM
from optimum_onnx23.serving.batch import DynamicRows, SlotRows, StaticRows, choose_rows
from optimum_onnx23.serving.last_logits import last_position_logits
from optimum_onnx23.serving.slot_graph import SEQLENS_K, TOTAL_SEQUENCE_LENGTH, to_kv_slots

# Sliding windows of 6 (mixtral over every layer; cohere2 and gemma3_text on alternate layers): the
# prompts (9-13 tokens) and the decoding run past them. qwen3, cohere, gemma3_text: 4-D Attention (q/k norms).
FAMILIES = ["bundled", "mixtral", "qwen3", "gemma", "phi3", "cohere2", "gemma3_text", "cohere"]


def _run(batch, prompts, steps: int = 6, leaves: str = "1") -> dict[str, list[np.ndarray]]:
    """Prefill each prompt in two chunks, then decode; request `leaves` leaves after 2 steps."""
    logits: dict[str, list[np.ndarray]] = {}
    for i, prompt in enumerate(prompts):
        batch.prefill(str(i), prompt[:5])
        logits[str(i)] = [batch.prefill(str(i), prompt[5:]).numpy()]
        batch.admit(str(i))
    for step in range(steps):
        if step == 2:
            batch.remove({leaves})
        out = batch.decode([7 + step + int(request_id) for request_id in batch.rows])
        for row, request_id in enumerate(batch.rows):
            logits[request_id].append(out[row].numpy())
    return logits


@pytest.mark.parametrize("family", FAMILIES)
def test_slots_give_the_dynamic_cache_logits(family, exported_dir):
    model = ORTModelForCausalLM.from_pretrained(exported_dir(family))
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(4, 200, n)) for n in (9, 7, 13)]
    batch = SlotRows(model, 3, 64)
    assert batch.session.get_outputs()[0].shape[1] == 1  # logits for the last position only (serving.last_logits)
    slots = _run(batch, prompts)
    dynamic = _run(DynamicRows(model), prompts)
    assert slots.keys() == dynamic.keys() and [len(v) for v in slots.values()] == [7, 3, 7]
    for request_id in slots:
        got, want = np.stack(slots[request_id]), np.stack(dynamic[request_id])
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), (family, request_id)


def test_static_cache_export_serves_each_row_at_its_own_position(exported_dir):
    """`--cache static` exports (standard ops only): rows of different lengths decode together
    like the dynamic cache; the longest row is swapped to row 0 when it joins, and again when it
    leaves (the graph bounds causality with row 0's position)."""
    static = ORTModelForCausalLM.from_pretrained(exported_dir("llama", "--cache", "static", "--max-cache-len", "48", "--logits", "last"))
    dynamic = ORTModelForCausalLM.from_pretrained(exported_dir("llama"))
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(4, 200, n)) for n in (7, 13, 9)]
    batch = choose_rows(static, "auto", 3, 48)
    assert isinstance(batch, StaticRows)
    got = _run(batch, prompts, leaves="1")  # request 1 (the longest) leaves while in row 0
    want = _run(DynamicRows(dynamic), prompts, leaves="1")
    for request_id in want:
        a, b = np.stack(got[request_id]), np.stack(want[request_id])
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), request_id
    with pytest.raises(InvalidArgumentError, match="static cache, served on its own buffers"):
        choose_rows(static, "slots", 3, 48)


def test_slot_graph_ops_and_in_place_writes(exported_dir):
    folder = exported_dir("bundled")
    model = ORTModelForCausalLM.from_pretrained(folder)
    graph = ir.load(folder / "model.onnx")
    layers = to_kv_slots(graph)
    projections = sum(n.op_type == "MatMul" for n in graph.graph)
    assert last_position_logits(graph) is None
    ops = [(n.domain, n.op_type) for n in graph.graph]
    assert layers == model.io.num_layers
    assert ops.count(("", "Slice")) >= 1 and sum(n.op_type == "MatMul" for n in graph.graph) == projections
    lm_head = next(v for v in graph.graph.outputs if v.name == "logits").producer()
    assert lm_head.inputs[0].producer().name == "last_position"
    assert ops.count(("com.microsoft", "GroupQueryAttention")) == layers and ("", "Attention") not in ops
    names = [v.name for v in graph.graph.inputs]
    assert "attention_mask" not in names and names[-2:] == [SEQLENS_K, TOTAL_SEQUENCE_LENGTH]
    batch = SlotRows(model, 2, 32)
    batch.prefill("a", [5, 6, 7])
    batch.admit("a")
    key = batch.buffers["past_key_values.0.key"]
    assert key[0, :, :3].any() and not key[1].any()  # the prompt went to row 0 (from the spare slot), not row 1
    before = key[0, :, 3].copy()
    batch.decode([8])
    assert not np.array_equal(key[0, :, 3], before) and not key[0, :, 4:].any()  # written in place, nothing past it
    assert batch.lengths[0] == 4


@pytest.mark.parametrize(
    "family, reason",
    [("lfm2", "recurrent or convolution states"), ("gemma2", "without a boolean mask")],
)
def test_graphs_slots_cannot_express_fall_back_to_the_dynamic_cache_with_a_warning(family, reason, exported_dir, hybrid_exported_dir):
    model = ORTModelForCausalLM.from_pretrained(hybrid_exported_dir(family) if family == "lfm2" else exported_dir(family))
    with pytest.warns(UserWarning, match=f"KV slots do not apply .*{reason}"):
        assert isinstance(choose_rows(model, "auto", 2, 64), DynamicRows)
    with pytest.raises(InvalidArgumentError, match="--kv-cache slots: .*use --kv-cache dynamic"):
        choose_rows(model, "slots", 2, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(choose_rows(model, "dynamic", 2, 64), DynamicRows)


def _resident_kib(array: np.ndarray) -> int:
    """Resident KiB of the mappings that hold `array` (/proc/self/smaps: madvise splits a mapping)."""
    start = array.__array_interface__["data"][0]
    end, total, inside = start + array.nbytes, 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(x, 16) for x in head.split("-"))
            inside = low < end and start < high
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_slot_buffers_commit_the_positions_rows_use(exported_dir):
    """A row's first tokens commit their pages, not the row's whole length: numpy's huge pages
    committed a row per head (SmolLM2: 377 MB and ~0.9 s of page faults for a 48-token prompt)."""
    model = ORTModelForCausalLM.from_pretrained(exported_dir("bundled"))
    batch = SlotRows(model, 4, 65536)  # a head's positions span 4 MiB here, as at 8192 x 64 in SmolLM2 (2 MiB)
    key = batch.buffers["past_key_values.0.key"]
    batch.prefill("a", [5, 6, 7])
    batch.admit("a")
    batch.decode([8])
    heads, row_bytes = key.shape[1], key[0].nbytes
    # spare + row 0, each head's first page
    assert _resident_kib(key) <= 2 * heads * 8, (_resident_kib(key), row_bytes // 1024)
    assert row_bytes // 1024 > 4 * 2 * heads * 8  # the bound above means something
