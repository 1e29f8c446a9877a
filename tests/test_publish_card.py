"""The model card: metadata checked by huggingface_hub's parser and validators, and a text built from the export report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id

from optimum_onnx23.publish import ModelCardError, plan_hub_layout, validate_model_card

REPO_ID = "onnx-community-test/tiny-llama-onnx23"
BASE = "HuggingFaceTB/SmolLM2-135M"


@pytest.fixture(scope="module")
def export_folder(exported_dir) -> Path:
    return exported_dir("llama")


@pytest.fixture(scope="module")
def report(export_folder) -> dict:
    return json.loads((export_folder / "export_report.json").read_text())


@pytest.fixture(scope="module")
def card(export_folder) -> ModelCard:
    return plan_hub_layout(export_folder, REPO_ID, base_model=BASE).card


def test_metadata(card, report):
    # What the Hub reads is the YAML text: parse it back with huggingface_hub.
    parsed = ModelCard(str(card))
    meta = parsed.data.to_dict()
    assert meta["base_model"] == BASE
    validate_repo_id(meta["base_model"])
    assert meta["library_name"] == "transformers.js"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["tags"][:3] == ["onnx", f"opset-{report['opset']}", "optimum-onnx23"]
    assert {"transformers.js", "onnxruntime-genai", report["model_type"]} <= set(meta["tags"])
    assert validate_model_card(parsed).data.to_dict() == meta


def test_text_summarizes_the_export_report(card, report):
    text = card.text
    for package in ("optimum-onnx23", "torch", "transformers", "onnx", "onnxruntime"):
        assert f"| {package} | {report['versions'][package]} |" in text
    for op, count in report["fusions"]["op_counts"].items():
        assert f"| {op} | {count} | {report['expected_fusions'].get(op, '-')} |" in text
    assert f"max |ONNX − PyTorch| = {report['max_abs_diff']:.2e} over {len(report['validation'])} input shapes" in text
    for shape, diffs in report["validation"].items():
        assert f"| {shape} | {max(diffs.values()):.2e} |" in text
    assert f"ONNX opset {report['opset']}, dtype {report['dtype']}" in text
    assert "for text generation with the KV cache as graph inputs and outputs" in text
    assert "weights in `onnx/model.onnx_data`" in text


def test_usage_for_each_runtime(card):
    text = card.text
    assert f'pipeline("text-generation", model="{REPO_ID}", accelerator="ort")' in text
    assert f'ORTModelForCausalLM.from_pretrained("{REPO_ID}", subfolder="onnx", file_name="model.onnx")' in text
    assert 'import { pipeline } from "@huggingface/transformers";' in text and f'pipeline("text-generation", "{REPO_ID}"' in text
    assert f'og.Model(snapshot_download("{REPO_ID}"))' in text


def test_files_are_listed_with_their_sizes(export_folder):
    layout = plan_hub_layout(export_folder, REPO_ID)
    for f in layout.files[1:]:  # all but the card itself
        assert f"| `{f.path_in_repo}` |" in layout.card.text


def test_base_model_comes_from_the_report_when_the_export_used_a_hub_id(export_folder, tmp_path):
    folder = tmp_path / "from-hub-id"
    folder.mkdir()
    for p in export_folder.iterdir():
        if p.name != "export_report.json":
            shutil.copy2(p, folder / p.name)
    report = json.loads((export_folder / "export_report.json").read_text())
    (folder / "export_report.json").write_text(json.dumps({**report, "model": BASE}))
    layout = plan_hub_layout(folder, REPO_ID)
    assert layout.card.data.base_model == BASE
    assert f"ONNX export of [{BASE}](https://huggingface.co/{BASE})" in layout.card.text
    # A local folder is no Hub id: no base_model rather than an invalid one.
    assert plan_hub_layout(export_folder, REPO_ID).card.data.base_model is None


@pytest.mark.parametrize(
    "metadata, message",
    [
        ("library_name: transformers.js\npipeline_tag: text-generation\ntags: [onnx, '']", "must be a list of non-empty strings"),
        ("library_name: transformers.js\npipeline_tag: text-generation\ntags: [onnx]\nbase_model: [ok/model, bad..id]", "`base_model: bad..id`"),
        ("- a list, not a mapping", "not valid YAML"),
    ],
)
def test_invalid_metadata_is_one_line(metadata, message):
    with pytest.raises(ModelCardError) as error:
        validate_model_card(f"---\n{metadata}\n---\n\ntext\n")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_folder_without_export_report_gets_a_card_that_claims_nothing_about_it(export_folder, tmp_path):
    folder = tmp_path / "no-report"
    shutil.copytree(export_folder, folder, ignore=shutil.ignore_patterns("export_report.json"))
    card = plan_hub_layout(folder, REPO_ID).card
    assert "no `export_report.json`, so versions, fusions and parity are unknown" in card.text
    assert "made with optimum-onnx23" not in card.text and "| package | version |" not in card.text
    validate_model_card(str(card))
