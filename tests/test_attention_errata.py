"""The ONNX `Attention` errata, checked on onnxruntime, onnx's reference evaluator and numpy.

- onnx/onnx#8068: `is_causal` aligns the causal diagonal bottom-right: a query at in-block row `i`
  sees key `j` iff `j <= i + offset`, `offset` = the past length (`past_key` given, opset 23) or,
  per batch row, `nonpad_kv_seqlen[b] - q_len` (an external cache, opset 24); a query row with no
  key left outputs zeros, not NaN nor the mean of V.
- onnx/onnx#7867: `softcap` is applied to the scaled scores *before* the mask is added (a masked
  score stays -inf instead of becoming -softcap).

Each case is built where the two readings differ (past > 0 and q_len > 1; scores large enough
that tanh saturates), so a runtime on the wrong side of either erratum fails here. Our own graphs
never set `is_causal` (every fused Attention takes transformers' explicit mask), and softcap
families carry mask and softcap in one node: the gemma2 export is run on a chunked step
(past 11, 2 new tokens, left padding) by the reference evaluator against PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from test_export_flags import assert_matches_pytorch

B, H, D = 2, 2, 8


def _vi(name: str, elem: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, None)


def _attention_model(opset: int, inputs: list[tuple[str, int] | None], outputs: int, **attrs) -> onnx.ModelProto:
    """One Attention node; `inputs` in the op's order, None for an omitted optional input."""
    names = [i[0] if i else "" for i in inputs]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node("Attention", names, ["y", "present_key", "present_value"][:outputs], **attrs)
    graph = helper.make_graph(
        [node], "attention", [_vi(*i) for i in inputs if i], [_vi(n) for n in node.output]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _runs(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return {
        "onnxruntime": session.run(["y"], feeds)[0],
        "onnx.reference": np.asarray(ReferenceEvaluator(model).run(["y"], feeds)[0]),
    }


def _softmax_v(scores: np.ndarray, allowed: np.ndarray, v: np.ndarray) -> np.ndarray:
    """softmax over allowed keys @ V; a row with no allowed key is zeros (#8068)."""
    s = np.where(allowed, scores, -np.inf)
    top = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(top), top, 0))
    total = p.sum(-1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1), 0) @ v


def _tensors(seed: int, q_len: int, kv_len: int, magnitude: float = 3.0):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((B, H, q_len, D)) * magnitude).astype(np.float32)
    k = (rng.standard_normal((B, H, kv_len, D)) * magnitude).astype(np.float32)
    v = rng.standard_normal((B, H, kv_len, D)).astype(np.float32)
    return q, k, v


def _assert_reading(results: dict, right: np.ndarray, wrong: np.ndarray, what: str) -> None:
    # The two readings must differ on this case, else the test could not fail.
    assert np.abs(right - wrong).max() > 0.1, f"{what}: the case does not separate the readings"
    for runtime, got in results.items():
        assert not np.isnan(got).any(), f"{runtime}: NaN in {what}"
        diff = np.abs(got - right).max()
        assert diff < 1e-5, f"{runtime} does not follow {what}: max |diff| {diff:.3g} (vs the other reading {np.abs(got - wrong).max():.3g})"


def test_causal_with_past_aligns_bottom_right():
    """opset 23, `past_key` given, 3 new queries on 4 past keys: row i sees keys j <= i + 4."""
    past, q_len = 4, 3
    q, k, v = _tensors(0, q_len, q_len)
    _, pk, pv = _tensors(1, q_len, past)
    model = _attention_model(23, [("q", 1), ("k", 1), ("v", 1), None, ("pk", 1), ("pv", 1)], 3, is_causal=1)
    results = _runs(model, {"q": q, "k": k, "v": v, "pk": pk, "pv": pv})
    keys, values = np.concatenate([pk, k], 2), np.concatenate([pv, v], 2)
    scores = q @ keys.transpose(0, 1, 3, 2) / np.sqrt(D)
    i, j = np.arange(q_len)[:, None], np.arange(past + q_len)[None, :]
    bottom_right = _softmax_v(scores, j <= i + past, values)
    top_left = _softmax_v(scores, j <= i, values)
    _assert_reading(results, bottom_right, top_left, "bottom-right causal alignment with past_key (#8068)")


def test_causal_with_external_cache_aligns_bottom_right_per_row():
    """opset 24, the whole cache as K/V with `nonpad_kv_seqlen` per row, no past_key (#8068)."""
    q_len, cache = 3, 8
    q, k, v = _tensors(2, q_len, cache)
    nonpad = np.array([5, 7], np.int64)
    model = _attention_model(
        24, [("q", 1), ("k", 1), ("v", 1), None, None, None, ("nonpad", TensorProto.INT64)], 1, is_causal=1
    )
    results = _runs(model, {"q": q, "k": k, "v": v, "nonpad": nonpad})
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)
    i, j = np.arange(q_len)[:, None], np.arange(cache)[None, :]
    offset = (nonpad - q_len)[:, None, None, None]
    valid = j < nonpad[:, None, None, None]
    bottom_right = _softmax_v(scores, (j <= i + offset) & valid, v)
    top_left = _softmax_v(scores, (j <= i) & valid, v)
    _assert_reading(results, bottom_right, top_left, "per-row bottom-right alignment with nonpad_kv_seqlen (#8068)")


def test_causal_and_mask_fully_masked_row_is_zero():
    """is_causal composed with a boolean mask that removes every key of one query row: zeros (#8068)."""
    q_len, cache = 3, 8
    q, k, v = _tensors(3, q_len, cache)
    nonpad = np.array([5, 7], np.int64)
    mask = np.ones((B, 1, q_len, cache), bool)
    mask[0, :, 0, :] = False
    model = _attention_model(
        24, [("q", 1), ("k", 1), ("v", 1), ("m", TensorProto.BOOL), None, None, ("nonpad", TensorProto.INT64)], 1, is_causal=1
    )
    results = _runs(model, {"q": q, "k": k, "v": v, "m": mask, "nonpad": nonpad})
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)
    i, j = np.arange(q_len)[:, None], np.arange(cache)[None, :]
    allowed = (j <= i + (nonpad - q_len)[:, None, None, None]) & (j < nonpad[:, None, None, None]) & mask
    expected = _softmax_v(scores, allowed, v)
    mean_of_v = expected.copy()
    mean_of_v[0, :, 0] = v[0].mean(1)  # what a finite -inf sentinel gives for the empty row
    _assert_reading(results, expected, mean_of_v, "zeros for a fully masked row (#8068)")


@pytest.mark.parametrize("mask_kind", ["additive", "boolean"])
def test_softcap_is_applied_before_the_mask(mask_kind):
    """opset 23 with past: softcap(scores) + mask, not softcap(scores + mask) (#7867)."""
    past, q_len, cap = 4, 3, 1.0
    q, k, v = _tensors(4, q_len, q_len, magnitude=4.0)
    _, pk, pv = _tensors(5, q_len, past, magnitude=4.0)
    rng = np.random.default_rng(6)
    allowed = rng.random((q_len, past + q_len)) > 0.4
    allowed[:, 0] = True
    if mask_kind == "additive":
        # A finite additive mask (what a float mask built from -1e4 style constants does): the
        # wrong order caps it to -cap, letting masked keys back in.
        mask, elem = np.where(allowed, 0.0, -1e4).astype(np.float32), TensorProto.FLOAT
    else:
        mask, elem = allowed, TensorProto.BOOL
    model = _attention_model(
        23, [("q", 1), ("k", 1), ("v", 1), ("m", elem), ("pk", 1), ("pv", 1)], 3, softcap=cap
    )
    results = _runs(model, {"q": q, "k": k, "v": v, "m": mask, "pk": pk, "pv": pv})
    keys, values = np.concatenate([pk, k], 2), np.concatenate([pv, v], 2)
    scores = q @ keys.transpose(0, 1, 3, 2) / np.sqrt(D)
    before = _softmax_v(cap * np.tanh(scores / cap), allowed, values)
    if mask_kind == "additive":
        after_scores = cap * np.tanh((scores + mask) / cap)
    else:
        after_scores = cap * np.tanh(np.where(allowed, scores, -np.inf) / cap)
    after = _softmax_v(after_scores, np.ones_like(allowed), values)
    _assert_reading(results, before, after, "softcap before the mask (#7867)")


def test_our_softcap_graph_is_explicitly_masked_and_matches_pytorch_in_the_reference_evaluator(exported_dir, tiny_model_dir):
    """gemma2 (attention softcap 50, sliding window 6): every Attention node carries transformers'
    mask and `softcap`, none sets `is_causal` (so the errata's causal alignment cannot shift our
    graphs); onnx.reference runs it against PyTorch on a chunked step with past (2 new tokens on 11,
    left padding) and a 13-token prefill."""
    folder = exported_dir("gemma2")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(nodes) == 2
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("is_causal", 0) == 0 and attrs["softcap"] == pytest.approx(50.0)
        assert len(node.input) >= 4 and node.input[3], "Attention without transformers' mask"

    def reference_run(folder, feeds):
        full = onnx.load(str(folder / "model.onnx"))
        names = [o.name for o in full.graph.output]
        return {n: np.asarray(v).astype(np.float32) for n, v in zip(names, ReferenceEvaluator(full).run(names, feeds))}

    assert_matches_pytorch(reference_run, folder, tiny_model_dir("gemma2"))
