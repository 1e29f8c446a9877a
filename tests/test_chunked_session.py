"""Bounded-memory runs of a whole graph (issue 27): `ChunkedSession` runs the graph's nodes in
consecutive chunks of at most N bytes of weights, one onnxruntime session per chunk. Checked here on
the shared tiny export: its outputs (and an intermediate activation) are bit for bit those of one
session over the whole graph (prepacking off in both, as the exporter's validation has it); the
calibration statistics gathered chunk by chunk equal the whole-graph ones; `ort-cpu-int4` with
bounded memory skips the precision search with a warning and keeps the fixed list; and the export
picks `--streamed` itself, with its one-line notice, when the in-memory export would take more than
half of the available memory."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from optimum_onnx23.chunked_session import ChunkedSession

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")


def _feeds(session, rows: int = 2, length: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        if arg.name == "input_ids":
            feeds[arg.name] = rng.integers(0, 100, (rows, length))
        elif arg.name == "attention_mask":
            feeds[arg.name] = np.ones((rows, length), np.int64)
        elif arg.name == "position_ids":
            feeds[arg.name] = np.tile(np.arange(length), (rows, 1))
        else:
            feeds[arg.name] = np.zeros([rows, arg.shape[1], 0, arg.shape[3]], np.float32)
    return feeds


def test_chunked_session_computes_what_one_session_computes(exported_dir):
    import onnxruntime as ort

    path = exported_dir("bundled") / "model.onnx"
    chunked = ChunkedSession(path, max_chunk_bytes=64 << 10)
    assert len(chunked.chunks) >= 4 and max(chunked.chunk_bytes) < 1 << 20  # several chunks, none holds the weights whole
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    whole = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [a.name for a in chunked.get_inputs()] == [a.name for a in whole.get_inputs()]
    assert [(a.name, a.type) for a in chunked.get_outputs()] == [(a.name, a.type) for a in whole.get_outputs()]
    feeds = [_feeds(chunked, 2, 7), _feeds(chunked, 1, 3)]
    got = chunked.run_many(None, feeds)
    for f, outputs in zip(feeds, got):
        expected = whole.run(None, f)
        for arg, a, b in zip(whole.get_outputs(), outputs, expected):
            assert a.shape == b.shape and np.array_equal(a, b), arg.name
    # a graph saved without value_info: the values crossing the cuts are typed by shape inference
    import onnx

    bare = onnx.load(str(path), load_external_data=False)
    del bare.graph.value_info[:]
    untyped = ChunkedSession(bare, path.parent, max_chunk_bytes=64 << 10)
    untyped.check_types()
    for a, b in zip(untyped.run(None, feeds[0]), got[0]):
        assert np.array_equal(a, b)
    # an intermediate value, handed over as its chunk runs
    middle = next(o for node in chunked.chunks[len(chunked.chunks) // 2] for o in node.output if o)
    seen = {}
    chunked.run_many([middle, "logits"], feeds[:1], consume=lambda i, name, value: seen.setdefault(name, value))
    assert list(seen) == [middle, "logits"] and np.array_equal(seen["logits"], got[0][0])


def test_chunked_calibration_statistics_equal_the_whole_graphs(exported_dir):
    from optimum_onnx23.variants.folder import load_model
    from optimum_onnx23.variants.producers import _calibration
    from optimum_onnx23.variants.producers._linear import find_linears

    model = load_model(exported_dir("bundled") / "model.onnx")
    activations = list({l.activation.name: l.activation for l in find_linears(model.graph, True)}.values())
    windows = [np.arange(1, 40) % 97, np.arange(5, 30) % 89]
    whole = _calibration.input_hessians(model, activations, windows, full=False)
    chunked = _calibration.input_hessians(model, activations, windows, full=False, chunked=True)
    assert set(whole) == set(chunked) == {a.name for a in activations}
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_bounded_int4_attach_skips_the_search_with_a_warning(exported_dir, tmp_path, caplog):
    from optimum_onnx23.variants import attach_builtin_variants

    folder = tmp_path / "m"
    shutil.copytree(exported_dir("bundled"), folder)
    with caplog.at_level(logging.WARNING):
        report = attach_builtin_variants(folder, ["ort-cpu-int4"], {"ort-cpu-int4": {"bounded_memory": True}})
    info = report["variants"]["ort-cpu-int4"]
    assert "quantization" not in info  # no precision measured
    assert "int8" in info["ops"] or info["owned_bytes"] > 0
    assert any("bounded memory was asked for (--streamed without --quant-budget), so it is skipped: the fixed list is used" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("streamed, budget, expected", [(True, None, {"bounded_memory": True}), (True, 0.05, {"budget": 0.05}), (False, None, None)])
def test_a_streamed_export_asks_its_int4_variants_for_bounded_memory_unless_a_budget_is_given(monkeypatch, streamed, budget, expected):
    import types

    from optimum_onnx23 import variants
    from optimum_onnx23.exporters import steps

    seen = {}
    monkeypatch.setattr(variants, "attach_builtin_variants", lambda folder, names, options: seen.update(options) or {"variants": {}})
    ctx = types.SimpleNamespace(staging=None, report=types.SimpleNamespace(variants={}),
                                options=types.SimpleNamespace(quant_budget=budget, streamed=streamed, variants=["ort-cpu-int4"]))
    steps._attach_variants(ctx)
    assert seen.get("ort-cpu-int4") == expected and seen.get("int4") == expected


def test_export_streams_itself_when_in_memory_would_take_over_half_the_memory(tmp_path, monkeypatch, caplog):
    from tiny_models import build_tiny_model

    from optimum_onnx23.exporters import memory, steps
    from optimum_onnx23.exporters.pipeline import ExportOptions

    source = tmp_path / "model"
    build_tiny_model("llama", seed=0, num_layers=6).to(torch.bfloat16).save_pretrained(source)
    weights = sum(p.numel() for p in build_tiny_model("llama", num_layers=6).parameters()) * 4
    options = ExportOptions(model=str(source), output=tmp_path / "out")
    in_memory = memory._BASE + 1.6 * weights
    monkeypatch.setattr(steps, "available_bytes", lambda: int(1.5 * in_memory))  # fits, but takes over half
    with caplog.at_level(logging.WARNING):
        assert steps._check_memory(options) is True
    notice = [r.getMessage() for r in caplog.records if "Exporting with --streamed" in r.getMessage()]
    assert len(notice) == 1 and "more than half of the" in notice[0] and "\n" not in notice[0]
    monkeypatch.setattr(steps, "available_bytes", lambda: int(3 * in_memory))  # within half: in memory
    assert steps._check_memory(options) is False
