"""Bad input to the exporter: one line on stderr naming the problem, a non-zero exit, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_optimum_cli
from tiny_models import BUNDLED


def cli_error(capsys, *argv) -> tuple[int, str]:
    code = run_optimum_cli("export", "onnx", *argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((name, f".{name}")))


def test_unknown_architecture_lists_supported_ones(tmp_path, capsys):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    code, line = cli_error(capsys, "--dynamo", "--model", model, tmp_path / "out")
    assert code == 1
    assert line.startswith("error: Architecture `bert` is not supported")
    for supported in ("gemma2", "gpt2", "llama", "smollm3"):
        assert supported in line
    assert not (tmp_path / "out").exists()


def test_missing_model_folder(tmp_path, capsys):
    code, line = cli_error(capsys, "--dynamo", "--model", tmp_path / "nope", tmp_path / "out")
    assert code == 1 and "does not exist" in line and str(tmp_path / "nope") in line


def test_folder_without_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, line = cli_error(capsys, "--dynamo", "--model", tmp_path / "empty", tmp_path / "out")
    assert code == 1 and "has no config.json" in line


def test_hub_id_not_in_offline_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, line = cli_error(capsys, "--dynamo", "--model", "no-such-org/no-such-model", "--cache-dir", tmp_path, tmp_path / "out")
    assert code == 1 and "no-such-org/no-such-model" in line and "HF cache" in line


@pytest.mark.parametrize("opset", ["17", "99"])
def test_opset_out_of_range(tmp_path, capsys, opset):
    code, line = cli_error(capsys, "--dynamo", "--opset", opset, "--model", BUNDLED, tmp_path / "out")
    assert code == 1 and f"Opset {opset} is out of range" in line and "--opset between 18 and" in line


def test_unknown_task(tmp_path, capsys):
    code, line = cli_error(capsys, "--dynamo", "--task", "fill-mask", "--model", BUNDLED, tmp_path / "out")
    assert code == 1 and "Unknown task `fill-mask`" in line and "text-generation-with-past" in line


def test_without_dynamo_and_without_optimum_onnx(tmp_path, capsys):
    code, line = cli_error(capsys, "--model", BUNDLED, tmp_path / "out")
    assert code == 2 and "pass --dynamo" in line
    assert not (tmp_path / "out").exists()


def test_non_empty_output_refused_then_replaced_with_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, line = cli_error(capsys, "--dynamo", "--model", BUNDLED, out)
    assert code == 1 and "exists and is not empty" in line and "--overwrite" in line
    assert (out / "keep.txt").read_text() == "user data"

    assert run_optimum_cli("export", "onnx", "--dynamo", "--overwrite", "--model", BUNDLED, out) == 0
    assert (out / "model.onnx").is_file() and not (out / "keep.txt").exists()
    assert leftovers(tmp_path, "out") == ["out"]


def test_failed_validation_leaves_nothing_behind(tmp_path, capsys):
    code, line = cli_error(capsys, "--dynamo", "--atol", "1e-12", "--model", BUNDLED, tmp_path / "out")
    assert code == 1
    assert line.startswith("error: ONNX outputs differ from PyTorch beyond atol=1e-12") and "Nothing was written" in line
    assert leftovers(tmp_path, "out") == []


def test_interrupted_export_leaves_existing_output_untouched(tmp_path, monkeypatch):
    from optimum_onnx23 import fusions
    from optimum_onnx23.exporters import export

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")

    def interrupt(model):
        raise KeyboardInterrupt

    monkeypatch.setattr(fusions, "fuse", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(BUNDLED, out, overwrite=True)
    assert leftovers(tmp_path, "out") == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_export_from_hub_cache_offline(tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1 (no network)."""
    from optimum_onnx23.exporters import export

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for source in BUNDLED.iterdir():
        blob = repo / "blobs" / f"blob-{source.name}"
        shutil.copy(source, blob)
        (snapshot / source.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    report = export("tiny-org/tiny-llama", tmp_path / "out", cache_dir=str(cache))
    assert report.model == "tiny-org/tiny-llama" and report.max_abs_diff <= 1e-4
    assert (tmp_path / "out" / "tokenizer.json").is_file()

    from optimum_onnx23.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="tiny-org/tiny-llama"):
        export("tiny-org/tiny-llama", tmp_path / "out2", cache_dir=str(cache), revision="no-such-branch")
    assert not (tmp_path / "out2").exists()
