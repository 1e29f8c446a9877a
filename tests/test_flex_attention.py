"""`--attn-implementation flex_attention`: torch's flex_attention op as `ai.onnx.preview.FlexAttention`.

One tiny Gemma-2 export (softcap in every layer's score_mod, a sliding window in the first layer's
mask_mod, causal + left padding + cache offset in both) checked against PyTorch (transformers'
own eager attention, an implementation independent of the flex path) on the validation shapes,
through onnxruntime (the `ort-cpu-functions` variant: FlexAttention's ONNX function body, as
onnxruntime 1.32 has no kernel) and through onnx's reference evaluator on the main graph with the
preview op itself; generation identical to transformers. A hand-built flex_attention call checks
the emitter and the body expansion without the pipeline.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from flex_reference import FlexAttention as ScopedFlexAttention
from onnx.reference import ReferenceEvaluator
from test_export_flags import assert_matches_pytorch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23.arguments import check_export_arguments
from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.exporters.tracing.flex_attention import FLEX_DOMAIN, TRANSLATIONS, adopt_flex_opset, flex_masks
from optimum_onnx23.pipelines import ORTModelForCausalLM
from optimum_onnx23.variants import list_variants
from optimum_onnx23.variants.producers import ort_cpu_functions
from optimum_onnx23.variants.producers._expand import expand_ops, outer_values
from optimum_onnx23.variants.runtime import select_for_providers


@pytest.fixture(scope="module")
def gemma2_flex(exported_dir):
    return exported_dir("gemma2", "--attn-implementation", "flex_attention")


def _flex_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "FlexAttention" and n.domain == FLEX_DOMAIN]


def _score_mod(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "score_mod")


def test_flex_export_writes_one_flex_attention_per_layer_with_the_modifiers_in_score_mod(gemma2_flex):
    model = onnx.load(str(gemma2_flex / "model.onnx"), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[FLEX_DOMAIN] == 1
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Attention"] == 0 and len(_flex_nodes(model)) == 2
    sliding, full = (collections.Counter(n.op_type for n in _score_mod(node).node) for node in _flex_nodes(model))
    assert sliding["Tanh"] == full["Tanh"] == 1  # attn_logit_softcapping in both layers
    # the window: one more comparison (kv > q - window) and its And in the sliding layer only
    assert sliding["Greater"] == 1 and full["Greater"] == 0 and sliding["And"] == full["And"] + 2
    for node in _flex_nodes(model):
        graph = _score_mod(node)
        assert [i.name for i in graph.input] == ["flex_scores"] and len(graph.output) == 1
        defined = {o for n in graph.node for o in n.output} | {"flex_scores", ""}
        outer = {i for n in graph.node for i in n.input} - defined
        producers = {o for n in model.graph.node for o in n.output}
        # what score_mod reads from the model is computed there (padding mask, cache offset), no constant
        assert outer and outer <= producers, outer
    # onnxruntime has no kernel: the function-body variant, FlexAttention expanded, no other change
    variants = {v.name: v for v in list_variants(model)}
    assert set(variants) == {ort_cpu_functions.NAME}
    assert ort_cpu_functions.ops_without_kernel(ir.load(gemma2_flex / "model.onnx").graph, 23) == ["FlexAttention"]
    import json

    report = json.loads((gemma2_flex / "export_report.json").read_text())
    assert report["attn_implementation"] == "flex_attention"
    assert report["expected_fusions"][f"{FLEX_DOMAIN}::FlexAttention"] == 2 and "Attention" not in report["expected_fusions"]
    assert not any("Fusion gap" in w for w in report["warnings"])
    import onnxruntime as ort

    with pytest.raises(Exception, match="FlexAttention"):
        ort.InferenceSession(str(gemma2_flex / "model.onnx"), providers=["CPUExecutionProvider"])


def _onnxruntime_run(folder, feeds):
    selected, chosen = select_for_providers(folder / "model.onnx", ["CPUExecutionProvider"])
    assert chosen == ort_cpu_functions.NAME
    session = selected.session(["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: v.astype(np.float32) for n, v in zip(names, session.run(names, feeds))}


def _reference_run(folder, feeds):
    """onnx.reference on the main graph, FlexAttention as the preview op (outer scope given)."""
    model = onnx.load(str(folder / "model.onnx"))
    model.ClearField("functions")  # the variant's function; the main graph does not call it
    names = [o.name for o in model.graph.output]
    evaluator = ReferenceEvaluator(model, new_ops=[ScopedFlexAttention])
    return {n: np.asarray(v).astype(np.float32) for n, v in zip(names, evaluator.run(names, feeds))}


def test_flex_export_matches_transformers_eager_through_onnxruntime_and_the_reference_evaluator(gemma2_flex, tiny_model_dir):
    source = tiny_model_dir("gemma2")
    assert_matches_pytorch(_onnxruntime_run, gemma2_flex, source)
    assert_matches_pytorch(_reference_run, gemma2_flex, source)


def test_flex_export_generates_as_transformers(gemma2_flex, tiny_model_dir):
    source = tiny_model_dir("gemma2")
    tokenizer = AutoTokenizer.from_pretrained(gemma2_flex, padding_side="left")
    batch = tokenizer(["ONNX is an open format", "Hello"], return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()  # left padding reaches the mask_mod
    got = ORTModelForCausalLM.from_pretrained(gemma2_flex, provider="CPUExecutionProvider").generate(
        **batch, max_new_tokens=12, do_sample=False
    )
    assert got.shape[1] > 6 + 12  # past the sliding window (6)
    for implementation in ("eager", "flex_attention"):
        model = AutoModelForCausalLM.from_pretrained(source, attn_implementation=implementation).eval()
        with torch.no_grad(), flex_masks():  # flex: torch's flex_attention uncompiled, as in validation
            expected = model.generate(**batch, max_new_tokens=12, do_sample=False)
        assert torch.equal(got, expected), implementation


def test_quantized_variants_refuse_a_flex_export_in_one_line_and_leave_the_files_as_they_were(gemma2_flex, tmp_path):
    import shutil

    from optimum_onnx23.variants import attach_builtin_variants

    folder = shutil.copytree(gemma2_flex, tmp_path / "flex")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("model.onnx")}
    report = attach_builtin_variants(folder, ["int4", "ort-cpu-int8"])
    assert not report["variants"]
    for name in ("int4", "ort-cpu-int8"):  # both forms: the check is before calibration
        reason = report["skipped"][name]
        assert "no kernel for FlexAttention" in reason and "export without --attn-implementation flex_attention" in reason, reason
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("model.onnx")} == before


# ---- the emitter and the body expansion, without the pipeline --------------------------------------
class _FlexCall(torch.nn.Module):
    """GQA flex_attention with a softcap score_mod and a causal + padding + window mask_mod whose
    captured values (2-D mask, offset) have symbolic shapes, as transformers' are."""

    def forward(self, q, k, v, mask):
        from torch.nn.attention.flex_attention import flex_attention

        from optimum_onnx23.exporters.tracing.flex_attention import _dense_block_mask

        offset = k.shape[2] - q.shape[2]

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx + offset >= kv_idx) & (mask[b, kv_idx] > 0) & (q_idx + offset - kv_idx < 4)

        def score_mod(score, b, h, q_idx, kv_idx):
            return 20.0 * torch.tanh(score / 20.0)

        block_mask = _dense_block_mask(mask_mod, q.shape[0], q.shape[2], k.shape[2], q.device)
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True, scale=0.3)


def test_flex_attention_op_and_its_function_body_match_torch_on_a_hand_built_call(tmp_path):
    torch.manual_seed(0)
    sample = (torch.randn(2, 4, 5, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16), torch.ones(2, 7, dtype=torch.int64))
    batch, q_len, kv_len = (torch.export.Dim(n, min=1, max=64) for n in ("batch", "q_len", "kv_len"))
    shapes = ({0: batch, 2: q_len}, {0: batch, 2: kv_len}, {0: batch, 2: kv_len}, {0: batch, 1: kv_len})
    with flex_masks():
        program = torch.onnx.export(_FlexCall().eval(), sample, dynamic_shapes=shapes, dynamo=True, custom_translation_table=TRANSLATIONS,
                                    optimize=False, opset_version=23)
    model = program.model
    assert adopt_flex_opset(model) == 1
    path = tmp_path / "flex.onnx"
    ir.save(model, path)
    onnx.checker.check_model(str(path), full_check=True)

    q, k, v = torch.randn(3, 4, 6, 16), torch.randn(3, 2, 9, 16), torch.randn(3, 2, 9, 16)
    mask = torch.ones(3, 9, dtype=torch.int64)
    mask[2, :5] = 0  # row 2: its first queries see only padding (fully masked rows)
    with torch.no_grad():
        expected = _FlexCall()(q, k, v, mask).numpy()
    feeds = dict(zip([i.name for i in onnx.load(str(path)).graph.input], (t.numpy() for t in (q, k, v, mask))))
    positions, keys = np.arange(6)[:, None] + 3, np.arange(9)[None, :]
    visible = (positions >= keys) & (positions - keys < 4) & (mask.numpy()[:, None, :] > 0)
    rows = visible.any(-1)  # torch writes zeros for a fully masked row; the ONNX op averages (flex_attention.py)
    assert not rows.all()

    with pytest.raises(RuntimeError, match="Unable to find input"):  # onnx 1.23's reference op drops the outer scope
        ReferenceEvaluator(str(path)).run(None, feeds)
    reference = ReferenceEvaluator(str(path), new_ops=[ScopedFlexAttention]).run(None, feeds)[0]
    np.testing.assert_allclose(reference.transpose(0, 2, 1, 3)[rows], expected.transpose(0, 2, 1, 3)[rows], atol=1e-5)

    from onnx_ir.passes.common import ShapeInferencePass

    expanded = ShapeInferencePass()(ir.load(path)).model
    node = next(n for n in expanded.graph if n.op_type == "FlexAttention")
    assert [v.name for v in outer_values(node)]  # the mask and the offset, read by name
    assert expand_ops(expanded, ["FlexAttention"])["FlexAttention"] == 1
    assert not [n for n in expanded.graph if n.domain == FLEX_DOMAIN]
    import onnxruntime as ort

    session = ort.InferenceSession(ir.to_proto(expanded).SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, reference, atol=1e-5)  # the body computes what the reference op computes


def test_flex_attention_flag_is_checked_before_anything_loads():
    arguments = dict(task="text-generation-with-past", opset=23, dtype="fp32", atol=None, rtol=None, logits="all", variants=())
    check_export_arguments(**arguments, cache="dynamic", max_cache_len=None, attn_implementation="flex_attention")
    with pytest.raises(InvalidArgumentError, match="attention implementation `sdpa`"):
        check_export_arguments(**arguments, cache="dynamic", max_cache_len=None, attn_implementation="sdpa")
    with pytest.raises(InvalidArgumentError, match="dynamic cache only"):
        check_export_arguments(**arguments, cache="static", max_cache_len=64, attn_implementation="flex_attention")
    with pytest.raises(InvalidArgumentError, match="fp32 only"):
        check_export_arguments(**{**arguments, "dtype": "fp16"}, cache="dynamic", max_cache_len=None, attn_implementation="flex_attention")
