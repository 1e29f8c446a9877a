"""Mixture-of-Experts exports (optimum_onnx23/exporters/families/moe.py, tracing/experts.py) beyond what test_export and
test_generation check for every family: the per-expert `If`s have static shapes, read each expert's
weights in place and match transformers whichever experts are taken (and the If over gathered/all
experts beyond the per-expert limit), the tiny configs really exercise each family's gating quirks,
the `ort-cpu-moe` variant, and the static cache."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_export import run_both
from tiny_models import MOE_EXPERTS, TINY_MOE_CONFIGS, build_tiny_model, families_in_run
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23.pipelines import ORTModelForCausalLM

MOE = families_in_run(TINY_MOE_CONFIGS)  # one family per building block unless OPTIMUM_ONNX23_ALL_FAMILIES=1
# Ops whose output shape depends on data: none may appear in the graph or its subgraphs.
DATA_DEPENDENT = {"NonZero", "Unique", "Compress", "Loop", "Scan", "SequenceInsert", "SplitToSequence"}
PROMPTS = ["ONNX is", "The tiny model reads a much longer prompt than the others", "Hi"]


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)


def _branches(node: onnx.NodeProto) -> dict[str, list[str]]:
    return {a.name: [n.op_type for n in a.g.node] for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}


def _num_experts(model_dir) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    keys = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
    return next(getattr(config, key) for key in keys if hasattr(config, key))


@pytest.mark.parametrize("model_type", MOE)
def test_per_expert_ifs_are_static_and_match_transformers(model_type, exported_dir, tiny_model_dir):
    from optimum_onnx23.exporters.tracing.experts import PER_EXPERT_MAX_EXPERTS

    folder = exported_dir(model_type)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    ops = {node.op_type for node in _all_nodes(model.graph)}
    assert not ops & DATA_DEPENDENT, f"{model_type}: data-dependent ops {ops & DATA_DEPENDENT}"
    experts = _num_experts(tiny_model_dir(model_type))
    assert experts <= PER_EXPERT_MAX_EXPERTS
    ifs = [node for node in model.graph.node if node.op_type == "If"]
    assert ifs and len(ifs) % experts == 0, (len(ifs), experts)
    initializers = {t.name for t in model.graph.initializer}
    for node in ifs:
        branches = _branches(node)
        # then: this expert's two matmuls on weights of its own, read in place (no Gather copy); else: zeros.
        assert branches["then_branch"].count("MatMul") == 2 and "Gather" not in branches["then_branch"], branches["then_branch"]
        assert "MatMul" not in branches["else_branch"], branches["else_branch"]
        then = next(a.g for a in node.attribute if a.name == "then_branch")
        weights = [n.input[1] for n in then.node if n.op_type == "MatMul"]
        assert all(w in initializers for w in weights), weights
    # Decode (few experts taken: batch 1 and 3) and prefill (most taken) both match transformers.
    for batch, seq, past, pad, seed in ((1, 1, 6, 0, 5), (3, 1, 5, 2, 6), (1, 9, 0, 0, 7)):
        expected, actual, valid = run_both(folder, tiny_model_dir(model_type), batch, seq, past, pad, seed)
        for name, ref in expected.items():
            got = actual[name]
            if name == "logits":
                ref, got = ref[valid], got[valid]
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=f"{model_type} {name} batch={batch} seq={seq}")


def test_gathered_form_beyond_the_per_expert_limit(tmp_path, tiny_model_dir, quiet_onnxruntime, monkeypatch):
    """Above `PER_EXPERT_MAX_EXPERTS` the export holds one If over gathered (few rows) or all
    (many rows) experts instead; both branches match transformers."""
    from optimum_onnx23 import export
    from optimum_onnx23.exporters.tracing import experts

    monkeypatch.setattr(experts, "PER_EXPERT_MAX_EXPERTS", MOE_EXPERTS - 1)
    source = tiny_model_dir("mixtral")
    export(source, tmp_path / "onnx")
    model = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False)
    ifs = [node for node in model.graph.node if node.op_type == "If"]
    assert len(ifs) == AutoModelForCausalLM.from_pretrained(source).config.num_hidden_layers
    for node in ifs:
        branches = _branches(node)
        assert branches["then_branch"].count("Gather") >= 2 and "MatMul" in branches["then_branch"], branches["then_branch"]
        assert "Gather" not in branches["else_branch"] and "ScatterElements" in branches["else_branch"], branches["else_branch"]
    for batch, seq, past, pad, seed in ((1, 1, 6, 0, 5), (1, 9, 0, 0, 7)):  # rows * k < experts gathers, more rows go dense
        expected, actual, valid = run_both(tmp_path / "onnx", source, batch, seq, past, pad, seed)
        np.testing.assert_allclose(actual["logits"][valid], expected["logits"][valid], atol=1e-4, rtol=0)


def _routing(model, ids):
    """Per MoE layer: (router module, its input rows, its outputs) for one forward of `ids`."""
    captured = []
    routers = [m for name, m in model.named_modules() if name.endswith((".gate", ".router")) and hasattr(m, "top_k")]
    hooks = [r.register_forward_hook(lambda m, args, out: captured.append((m, args[0].reshape(-1, args[0].shape[-1]), out))) for r in routers]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return captured


def test_tiny_configs_exercise_the_gating_quirks():
    """Parity on these tiny models means something only if their routing takes the paths that
    differ between families: checked here on transformers alone."""
    ids = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(0))

    # DeepSeek-V3 / GLM-4.5: group masking and the score-correction bias change which experts win;
    # routed scaling makes the weights sum to more than 1.
    for model_type in ("deepseek_v3", "glm4_moe"):
        model = build_tiny_model(model_type)
        for router, rows, (logits, weights, index) in _routing(model, ids):
            scores = logits.sigmoid()
            plain = scores.topk(router.top_k, dim=-1).indices.sort(-1).values
            assert (plain != index.sort(-1).values).any(), f"{model_type}: grouped top-k with correction picks the plain top-k"
            assert router.e_score_correction_bias.abs().max() > 0
            assert torch.allclose(weights.sum(-1), torch.full_like(weights[:, 0], router.routed_scaling_factor), atol=1e-5)
            assert router.routed_scaling_factor != 1.0
            if model_type == "deepseek_v3":
                biased = (scores + router.e_score_correction_bias).topk(router.top_k, dim=-1).indices.sort(-1).values
                assert (biased != index.sort(-1).values).any(), "deepseek_v3: group masking never changes the choice"

    # ERNIE 4.5: moe_statics' correction decides the top-k, the weights come from the raw softmax.
    model = build_tiny_model("ernie4_5_moe")
    for router, rows, (logits, weights, index) in _routing(model, ids):
        plain = logits.softmax(-1).topk(router.top_k, dim=-1).indices.sort(-1).values
        assert (plain != index.sort(-1).values).any(), "ernie4_5_moe: the score correction never changes the choice"

    # gpt-oss: router bias; SwiGLU clamp reached on the selected experts' gate and up projections.
    model = build_tiny_model("gpt_oss")
    for router, rows, (logits, weights, index) in _routing(model, ids):
        assert router.bias.abs().max() > 0
        experts = next(m for m in model.modules() if type(m).__name__ == "GptOssExperts")
        gate_up = torch.einsum("th,thn->tn", rows.repeat_interleave(2, 0), experts.gate_up_proj[index.reshape(-1)])
        gate_up = gate_up + experts.gate_up_proj_bias[index.reshape(-1)]
        assert (gate_up[:, ::2] > experts.limit).any() and (gate_up[:, 1::2].abs() > experts.limit).any()
        assert experts.down_proj_bias.abs().max() > 0

    # Qwen2-MoE: the shared expert's sigmoid gate is neither ~0 nor ~1.
    model = build_tiny_model("qwen2_moe")
    block = next(m for m in model.modules() if hasattr(m, "shared_expert_gate"))
    with torch.no_grad():
        gate = torch.sigmoid(block.shared_expert_gate(model.model.embed_tokens(ids)))
    assert 0.05 < gate.mean() < 0.95 and gate.std() > 0.01


@pytest.fixture(scope="module")
def moe_variant_dir(exported_dir, shared_tmp, quiet_onnxruntime):
    from filelock import FileLock

    from optimum_onnx23.variants import attach_builtin_variants

    def make(model_type: str):
        folder = shared_tmp / f"moe-variant-{model_type}"
        with FileLock(str(folder) + ".lock"):
            if not (folder / "variant_report.done").exists():
                shutil.rmtree(folder, ignore_errors=True)
                shutil.copytree(exported_dir(model_type), folder)
                report = attach_builtin_variants(folder, ["ort-cpu-moe"])
                assert report["skipped"] == {} and report["variants"]["ort-cpu-moe"]["owned_bytes"] > 0
                (folder / "variant_report.done").write_text("ok")
        return folder

    return make


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss", "deepseek_v3"])
def test_ort_cpu_moe_variant_matches_main_graph_and_transformers(model_type, exported_dir, tiny_model_dir, moe_variant_dir):
    """Silu-gated experts; gpt-oss's clamped SwiGLU with biases; DeepSeek's scaled sigmoid routing."""
    import onnx_ir as ir

    from optimum_onnx23.variants import select_variant
    from optimum_onnx23.variants.folder import load_model

    folder = moe_variant_dir(model_type)
    selected = select_variant(load_model(folder / "model.onnx"), variant="ort-cpu-moe")
    ops = [node.op_type for node in selected.graph.all_nodes()]
    main = onnx.load(str(exported_dir(model_type) / "model.onnx"), load_external_data=False)
    experts = _num_experts(tiny_model_dir(model_type))
    assert ops.count("MoE") * experts == [n.op_type for n in main.graph.node].count("If") and "If" not in ops
    ir.save(selected, folder / "selected-moe.onnx")  # its external data is the folder's model.onnx_data
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (exported_dir(model_type) / "model.onnx", folder / "selected-moe.onnx")]
    rng = np.random.default_rng(0)
    for rows, past in ((1, 4), (3, 0), (12, 2)):
        feeds = {"input_ids": rng.integers(4, 300, (1, rows)), "attention_mask": np.ones((1, past + rows), np.int64),
                 "position_ids": np.arange(past, past + rows)[None]}
        for i in sessions[0].get_inputs()[3:]:
            feeds[i.name] = rng.standard_normal((1, i.shape[1], past, i.shape[3])).astype(np.float32)
        expected, got = (s.run(None, feeds) for s in sessions)
        for a, b in zip(expected, got):
            np.testing.assert_allclose(b, a, atol=1e-4, rtol=0, err_msg=f"{model_type} rows={rows}")

    # Our runtime selects the variant for the CPU provider and generates transformers' tokens.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir(model_type)).eval()
    model = ORTModelForCausalLM.from_pretrained(folder)
    assert model.session.get_modelmeta().custom_metadata_map.get("optimum_onnx23.selected_variant") == "ort-cpu-moe"
    for kwargs in (dict(max_new_tokens=8, do_sample=False), dict(max_new_tokens=6, do_sample=False, num_beams=4)):
        assert torch.equal(model.generate(**inputs, **kwargs), reference.generate(**inputs, **kwargs)), f"{model_type} {kwargs}"


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss", "deepseek_v3"])
def test_static_cache_generates_like_transformers(model_type, exported_dir, tiny_model_dir):
    """Sliding window; sinks (unfused attention); MLA's latent cache."""
    folder = exported_dir(model_type, "--cache", "static", "--max-cache-len", "48")
    model = ORTModelForCausalLM.from_pretrained(folder)
    assert model.io.static and model.io.max_cache_len == 48
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert [n.op_type for n in graph.graph.node].count("TensorScatter") == 2 * model.io.num_layers
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir(model_type)).eval()
    for kwargs in (dict(max_new_tokens=10, do_sample=False), dict(max_new_tokens=6, do_sample=False, num_beams=4, num_return_sequences=2)):
        assert torch.equal(model.generate(**inputs, **kwargs), reference.generate(**inputs, **kwargs)), f"{model_type} {kwargs}"
