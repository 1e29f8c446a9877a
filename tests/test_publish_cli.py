"""The publishing flags, on a parser built here as the export command builds its own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from argparse import ArgumentParser
from pathlib import Path

import pytest
from test_publish_hub import REPO_ID, fake_hub, no_network  # noqa: F401  (fixtures)

from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.publish import GenaiPrecisionError, InvalidRepoIdError, MissingTokenError, check_publish_args, publish_from_args


def _parser() -> ArgumentParser:
    from optimum_onnx23.cli.export import parse_export_args

    parser = ArgumentParser(prog="optimum-cli export onnx")
    parse_export_args(parser)  # the export command adds the publishing flags itself
    return parser


@pytest.fixture(scope="module")
def export_folder(exported_dir) -> Path:
    return exported_dir("llama")


def test_flags_parse(no_network, capsys):
    args = _parser().parse_args(
        ["--dynamo", "-m", "model", "out", "--push-to-hub", REPO_ID, "--private", "--commit-message", "first", "--dry-run"]
    )
    assert (args.push_to_hub, args.private, args.commit_message, args.dry_run) == (REPO_ID, True, "first", True)
    defaults = _parser().parse_args(["-m", "model", "out"])
    assert (defaults.push_to_hub, defaults.private, defaults.commit_message, defaults.dry_run) == (None, False, None, False)
    # no --push-to-hub: nothing to do (the folder is not even looked at), no network, nothing printed
    assert publish_from_args(defaults, Path("does-not-matter")) is None
    assert no_network == [] and capsys.readouterr() == ("", "")


def test_there_is_no_token_flag(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["-m", "model", "out", "--push-to-hub", REPO_ID, "--token", "hf_x"])
    assert "unrecognized arguments: --token" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, error, message",
    [
        (["--push-to-hub", "bad repo"], InvalidRepoIdError, "Invalid Hub repo id 'bad repo'"),
        (["--private"], InvalidArgumentError, "--private only applies to an upload; add --push-to-hub"),
        (["--dry-run"], InvalidArgumentError, "--dry-run only applies to an upload"),
        (["--genai-precision", "int4"], InvalidArgumentError, "--genai-precision only applies to an upload"),
        # a precision the export will not have costs no export
        (["--push-to-hub", REPO_ID, "--dry-run", "--genai-precision", "int4"], GenaiPrecisionError,
         "--genai-precision int4: this export will have fp32 (or `auto`); add --variant ort-cpu-int4 for int4."),
        (["--push-to-hub", REPO_ID, "--dry-run", "--variant", "ort-cpu-int8", "--genai-precision", "int4"], GenaiPrecisionError,
         "this export will have fp32, int8 (or `auto`)"),
    ],
)
def test_bad_flags_are_caught_before_the_export(argv, error, message):
    args = _parser().parse_args(["-m", "model", "out", *argv])
    with pytest.raises(error) as raised:
        check_publish_args(args)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_missing_token_is_caught_before_the_export(fake_hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    push = _parser().parse_args(["-m", "model", "out", "--push-to-hub", REPO_ID])
    with pytest.raises(MissingTokenError, match="set HF_TOKEN or run `hf auth login`"):
        check_publish_args(push)
    # a dry run needs no token; with one, a push passes the offline checks; neither asks the Hub
    assert check_publish_args(_parser().parse_args(["-m", "model", "out", "--push-to-hub", REPO_ID, "--dry-run"])) is None
    monkeypatch.setenv("HF_TOKEN", "hf_FakeTokenForTests0123456789abcdef")
    assert check_publish_args(push) is None
    assert fake_hub.requests == []


def test_dry_run_prints_the_plan_without_network(no_network, export_folder, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = _parser().parse_args(["-m", "model", str(export_folder), "--push-to-hub", REPO_ID, "--dry-run"])
    assert publish_from_args(args, export_folder) is None
    out = capsys.readouterr().out
    assert no_network == []
    assert f"public model repo {REPO_ID}" in out
    assert "onnx/model.onnx_data" in out and "genai_config.json" in out and "pipeline_tag: text-generation" in out


def test_genai_precision_flag_picks_the_graph_genai_runs(no_network, exported_dir, capsys):
    folder = exported_dir("llama", "--variant", "ort-cpu-int4")
    for flag, graph in ((["--genai-precision", "fp32"], "onnx/model.onnx"), ([], "onnx/model_q4.onnx")):
        args = _parser().parse_args(["-m", "model", str(folder), "--push-to-hub", REPO_ID, "--dry-run", "--variant", "ort-cpu-int4", *flag])
        assert publish_from_args(args, folder) is None
        out = capsys.readouterr().out
        assert f"onnxruntime-genai runs {graph} (" in out and f'"filename": "{graph}"' not in out
        assert re.search(r"^  onnx/model_q4\.onnx_data +\d", out, re.M)


def test_push_from_args(fake_hub, export_folder):
    args = _parser().parse_args(["-m", "model", str(export_folder), "--push-to-hub", REPO_ID, "--private", "--commit-message", "cli push"])
    info = publish_from_args(args, export_folder)
    assert fake_hub.repos[REPO_ID]["private"] is True
    assert fake_hub.repos[REPO_ID]["commits"][-1] == (info.oid, "cli push")
    assert json.loads(fake_hub.repos[REPO_ID]["files"]["genai_config.json"][0])["model"]["decoder"]["filename"] == "onnx/model.onnx"


def test_adding_the_flags_imports_nothing_heavy():
    # optimum-cli imports every command module at start-up: the flags must cost no torch/onnx/hub import.
    code = (
        "import sys; from argparse import ArgumentParser; "
        "from optimum_onnx23.publish import add_publish_arguments, check_publish_args; "
        "p = ArgumentParser(); add_publish_arguments(p); check_publish_args(p.parse_args([])); "
        "print([m for m in ('torch', 'onnx', 'onnxruntime', 'transformers', 'huggingface_hub') if m in sys.modules])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
