"""`ort-cpu-gqa` (variants/producers/ort_cpu_gqa.py): gpt-oss' attention with sinks as onnxruntime's
GroupQueryAttention with `head_sink`, on the tiny gpt-oss of the per-family tests (sliding and full
layers, 4 query / 2 kv heads): the selected graph computes the main graph's logits and present cache
on prefill, decode and chunked steps of left-padded batches, and generates transformers' tokens."""

from __future__ import annotations

import shutil

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23.errors import VariantNotApplicableError
from optimum_onnx23.pipelines import ORTModelForCausalLM
from optimum_onnx23.variants import attach_builtin_variants, select_variant
from optimum_onnx23.variants.folder import load_model
from optimum_onnx23.variants.producers import ort_cpu_gqa

PROMPTS = ["ONNX is", "The tiny model reads a much longer prompt than the others", "Hi"]


@pytest.fixture(scope="module")
def gqa_folder(exported_dir, tmp_path_factory, quiet_onnxruntime):
    folder = tmp_path_factory.mktemp("gqa") / "gpt_oss"
    shutil.copytree(exported_dir("gpt_oss"), folder)
    report = attach_builtin_variants(folder, [ort_cpu_gqa.NAME])
    yield folder, report
    shutil.rmtree(folder, ignore_errors=True)


def test_gqa_variant_matches_the_main_graph(gqa_folder, exported_dir):
    folder, report = gqa_folder
    added = report["variants"][ort_cpu_gqa.NAME]
    assert "com.microsoft::GroupQueryAttention" in added["ops"]
    assert added["owned_bytes"] == 2 * 4 * 4  # the sinks: 2 layers x 4 heads x fp32
    selected = select_variant(load_model(folder / "model.onnx"), variant=ort_cpu_gqa.NAME)
    ops = [n.op_type for n in selected.graph.all_nodes()]
    main = [n.op_type for n in ir.load(exported_dir("gpt_oss") / "model.onnx").graph.all_nodes()]
    # one GroupQueryAttention a layer; the attention's Softmax gone, the routers' (one a layer) kept
    assert ops.count("GroupQueryAttention") == 2 and ops.count("Softmax") == main.count("Softmax") - 2
    ir.save(selected, folder / "selected.onnx")  # its external data is the folder's model.onnx_data
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (exported_dir("gpt_oss") / "model.onnx", folder / "selected.onnx")]
    rng = np.random.default_rng(0)
    # prefill; padded decode past the sliding window (6); a padded chunk on a past; a padded prefill
    for batch, seq, past, pad in ((1, 5, 0, 0), (2, 1, 9, 3), (3, 3, 8, 4), (2, 12, 0, 5)):
        mask = np.ones((batch, past + seq), np.int64)
        mask[-1, :pad] = 0
        feeds = {"input_ids": rng.integers(4, 300, (batch, seq)), "attention_mask": mask,
                 "position_ids": np.clip(mask.cumsum(-1) - 1, 0, None)[:, past:]}
        for value in sessions[0].get_inputs()[3:]:
            feeds[value.name] = rng.standard_normal((batch, value.shape[1], past, value.shape[3])).astype(np.float32)
        names = [o.name for o in sessions[0].get_outputs()]
        want, got = (dict(zip(names, s.run(names, feeds))) for s in sessions)
        valid = mask[:, past:].astype(bool)
        for name in names:
            a, b = (want[name][valid], got[name][valid]) if name == "logits" else (want[name], got[name])
            np.testing.assert_allclose(b, a, atol=1e-4, rtol=0, err_msg=f"{name} batch={batch} seq={seq} past={past}")


def test_gqa_variant_generates_like_transformers(gqa_folder, tiny_model_dir):
    folder, _ = gqa_folder
    model = ORTModelForCausalLM.from_pretrained(folder)
    assert model.session.get_modelmeta().custom_metadata_map.get("optimum_onnx23.selected_variant") == ort_cpu_gqa.NAME
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_oss")).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    for prompts in (PROMPTS[:1], PROMPTS):
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
        for kwargs in (dict(max_new_tokens=10, do_sample=False), dict(max_new_tokens=8, do_sample=False, num_beams=4)):
            expected, got = reference.generate(**inputs, **kwargs), model.generate(**inputs, **kwargs)
            assert torch.equal(got, expected), f"{kwargs} batch={len(prompts)}: {got.tolist()} != {expected.tolist()}"


def test_gqa_variant_refused_without_sinks(exported_dir):
    with pytest.raises(VariantNotApplicableError, match="no attention with sinks"):
        ort_cpu_gqa.produce(load_model(exported_dir("llama") / "model.onnx"))
