"""Exports that trace 4 decoder layers and grow the graph to all of them
(`optimum_onnx23.exporters.passes.layer_replication`), checked against transformers and a full trace."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from test_export import run_both
from tiny_models import save_tiny_model, tiny_config
from transformers import AutoConfig

from optimum_onnx23.exporters import export
from optimum_onnx23.exporters.passes import layer_replication

LAYERS = 6
# Uniform decoders of different shapes (plain llama: the full-trace comparison below): per-head q/k
# norms, fused qkv/gate_up, LayerNorm with learned positions and gpt2's `h` layer list, post-norms,
# ALiBi (bloom: one bias for all layers in the mask), MLA (minicpm3: latent cache of another shape);
# and a MoE whose layer 0 is dense (the first MoE layer computes what later ones share) and whose
# MoE layers hold an `If` with subgraphs reading the layer's weights.
UNIFORM = ["qwen3", "phi3", "gpt2", "olmo2", "bloom", "minicpm3", "deepseek_v3"]


def graph_io(path) -> tuple[list[str], list[str], collections.Counter]:
    model = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(node.op_type for node in model.graph.node)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output], ops


@pytest.mark.parametrize("model_type", UNIFORM)
def test_replicated_layers_match_pytorch(model_type, tmp_path):
    source = save_tiny_model(model_type, tmp_path / "model", num_layers=LAYERS)
    report = export(source, tmp_path / "onnx")
    assert report.traced_layers == layer_replication.TRACED_LAYERS < LAYERS
    assert report.warnings == []  # fusion counts are the architecture's (one Attention per layer...)
    assert report.fusions["op_counts"]["Attention"] == LAYERS
    inputs, outputs, _ = graph_io(tmp_path / "onnx" / "model.onnx")
    assert inputs[3:] == [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    assert outputs == ["logits"] + [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    for batch, seq, past, pad, seed in ((1, 13, 0, 0, 1), (2, 2, 11, 4, 2)):
        expected, actual, valid = run_both(tmp_path / "onnx", source, batch, seq, past, pad, seed)
        for name, ref in expected.items():
            got = actual[name]
            if name == "logits":
                ref, got = ref[valid], got[valid]
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=f"{model_type} {name}")


def test_replicated_graph_equals_a_full_trace(tmp_path, monkeypatch):
    source = save_tiny_model("llama", tmp_path / "model", num_layers=LAYERS)
    grown = export(source, tmp_path / "grown")
    monkeypatch.setattr(layer_replication, "plan", lambda *args: False)
    full = export(source, tmp_path / "full")
    assert (grown.traced_layers, full.traced_layers) == (4, LAYERS)
    assert graph_io(tmp_path / "grown" / "model.onnx") == graph_io(tmp_path / "full" / "model.onnx")
    assert grown.op_histogram == full.op_histogram
    assert (tmp_path / "grown" / "model.onnx_data").stat().st_size == (tmp_path / "full" / "model.onnx_data").stat().st_size


def test_layers_that_differ_are_traced_whole():
    uniform = tiny_config("llama", LAYERS)
    assert layer_replication.plan(uniform, LAYERS)
    assert not layer_replication.plan(tiny_config("llama", 4), 4)  # nothing to gain
    # every 4th layer without rope; 5 sliding-window layers to 1 global
    smollm3 = AutoConfig.for_model("smollm3", num_hidden_layers=LAYERS, no_rope_layers=[1, 1, 1, 0, 1, 1])
    assert not layer_replication.plan(smollm3, LAYERS)
    gemma3 = AutoConfig.for_model("gemma3_text", num_hidden_layers=LAYERS, layer_types=["sliding_attention"] * 5 + ["full_attention"])
    assert not layer_replication.plan(gemma3, LAYERS)
