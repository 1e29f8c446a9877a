"""`optimum-cli onnx23 variants attach|list|select|strip` through the real optimum-cli entry point."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import onnx
import onnxruntime as ort
from conftest import run_optimum_cli


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("model.onnx*")}


def test_cli_round_trip(exported_dir, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(exported_dir("bundled"), folder)
    original = _digest(folder)

    data_before = (folder / "model.onnx_data").stat().st_size
    assert run_optimum_cli("onnx23", "variants", "attach", folder, "--variant", "ort-cpu-int8", "--variant", "ort-cpu") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    line = re.compile(r"attached (\S+): (\d+) nodes, \+(\d+\.\d\d) MB weights, \+(\d+\.\d) KB graph, \d+\.\d s")
    printed = [line.fullmatch(text).groups() for text in lines]
    assert [p[0] for p in printed] == ["ort-cpu-int8", "ort-cpu"]
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    bodies = {f.name: len(f.node) for f in proto.functions if f.domain == "pkg.optimum_onnx23.variant"}
    assert [int(p[1]) for p in printed] == [bodies["ort_cpu_int8"], bodies["ort_cpu"]]
    # int8 brings its packed weights to the data file; the fp32 ort-cpu rewrite adds no weight.
    added = (folder / "model.onnx_data").stat().st_size - data_before
    assert printed[0][2] == f"{added / 1e6:.2f}" and added > 0 and printed[1][2] == "0.00"

    assert run_optimum_cli("onnx23", "variants", "list", folder, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in listed] == ["ort-cpu-int8", "ort-cpu"]
    assert listed[0]["providers"] == ["CPUExecutionProvider"] and listed[0]["owned_bytes"] > 0

    out = tmp_path / "elsewhere" / "plain.onnx"
    assert run_optimum_cli("onnx23", "variants", "select", folder, "--variant", "ort-cpu", "-o", out) == 0
    assert "selected ort-cpu" in capsys.readouterr().out
    onnx.checker.check_model(str(out), full_check=True)
    plain = onnx.load(str(out), load_external_data=False)
    assert not plain.functions and sum(n.op_type == "SkipSimplifiedLayerNormalization" for n in plain.graph.node) == 4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert {o.name for o in session.get_outputs()} >= {"logits", "present.0.key"}

    assert run_optimum_cli("onnx23", "variants", "select", folder, "--provider", "FooExecutionProvider", "-o", out) == 1
    assert "error: Unknown execution provider 'FooExecutionProvider'" in capsys.readouterr().err

    assert run_optimum_cli("onnx23", "variants", "strip", folder) == 0
    assert "stripped ort-cpu-int8, ort-cpu" in capsys.readouterr().out
    assert _digest(folder) == original
    assert run_optimum_cli("onnx23", "variants", "attach", folder, "--variant", "nope") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Unknown built-in variant 'nope'") and "\n" not in err
