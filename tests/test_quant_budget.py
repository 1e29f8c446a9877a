"""int4's precision chosen by measurement against `--quant-budget`, on the bundled tiny Llama (its
real tokenizer tokenizes the bundled calibration texts): the choice meets the budget it states or
warns, a tighter budget never buys fewer int8 groups, the probe the sensitivities come from runs the
main graph exactly, choices are cached by content, and a bad budget is refused in one line.
Quality on real checkpoints: tests/test_real_variants.py, tests/test_real_gemma3.py."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from conftest import run_optimum_cli

from optimum_onnx23.errors import InvalidArgumentError
from optimum_onnx23.variants import attach_builtin_variants
from optimum_onnx23.variants.folder import load_model, strip_folder
from optimum_onnx23.variants.producers._calibration import calibration_windows, prefill_feeds, split_held_out
from optimum_onnx23.variants.producers._linear import find_linears, group_linears
from optimum_onnx23.variants.producers._precision import Probe, layer_grid

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")


@pytest.fixture(scope="module")
def folder(exported_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant-budget") / "bundled"
    shutil.copytree(exported_dir("bundled"), out)
    return out


def test_choice_meets_its_budget_or_warns_and_tighter_budgets_keep_more_int8(folder, caplog):
    chosen = {}
    for budget in (0.10, 0.002):
        with caplog.at_level(logging.WARNING):
            report = attach_builtin_variants(folder, ["int4"], {"int4": {"budget": budget}})
        strip_folder(folder / "model.onnx", ["int4"])
        q = report["variants"]["int4"]["quantization"]
        total = sum(c["int4"] + c["int8"] for c in q["groups"].values())
        assert total == len(q["bits"]) == len(q["sensitivity"]) == 2 * 4 + 1  # 2 layers x (QKV, O, gate/up, down) + lm_head
        assert q["budget"] == budget and q["held_out_tokens"] > 100
        if q["met"]:
            assert q["perplexity_change"] <= q["aim"] == pytest.approx(0.75 * budget)  # the margin for unseen text
            assert any(c["int8_groups"] == q["int8_groups"] and c["perplexity_change"] == q["perplexity_change"] for c in q["candidates"])
        else:
            assert q["int8_groups"] == total and "no precision assignment met the quality budget" in caplog.text
        chosen[budget] = q["int8_groups"]
    assert chosen[0.002] >= chosen[0.10]


def test_probe_runs_the_main_graph_exactly(folder):
    model = load_model(folder / "model.onnx")
    groups = group_linears(find_linears(model.graph), pack=True)
    probe = Probe(model, groups)
    ids = calibration_windows(folder)[0][None, :32]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    want = session.run(["logits"], {k: v for k, v in prefill_feeds(inputs, ids).items() if k in inputs})[0]
    np.testing.assert_allclose(probe.logits(ids), want, rtol=0, atol=1e-5)


def test_layer_grid_finds_the_decoder_layers(folder):
    model = load_model(folder / "model.onnx")
    groups = group_linears(find_linears(model.graph), pack=True)
    assert layer_grid(groups) == (2, 4)  # 2 layers x (QKV, O, gate/up, down); the lm_head off the grid
    assert layer_grid(groups[:1] + groups[-1:]) == (0, 0)


def test_held_out_windows_are_never_fit_windows():
    from tiny_models import BUNDLED

    windows = calibration_windows(BUNDLED)
    fit, held = split_held_out(windows)
    assert len(fit) + len(held) == len(windows) and len(held) >= 4
    assert not {w.tobytes() for w in fit} & {w.tobytes() for w in held}


def test_second_attach_reuses_the_measured_choice(folder, caplog):
    with caplog.at_level(logging.INFO, logger="optimum_onnx23"):
        first = attach_builtin_variants(folder, ["int4", "ort-cpu-int4"])
    assert first["variants"]["int4"]["quantization"]["bits"] == first["variants"]["ort-cpu-int4"]["quantization"]["bits"]
    assert "the same quantized weights as an earlier variant" in caplog.text  # one quantization for both forms
    strip_folder(folder / "model.onnx", ["int4", "ort-cpu-int4"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="optimum_onnx23"):
        again = attach_builtin_variants(folder, ["int4"])
    strip_folder(folder / "model.onnx", ["int4"])
    assert "precision measured before" in caplog.text
    assert again["variants"]["int4"]["quantization"]["bits"] == first["variants"]["int4"]["quantization"]["bits"]


@pytest.mark.parametrize("budget", [0, -0.1, 12])
def test_bad_budget_is_refused_in_one_line(folder, budget, capsys):
    with pytest.raises(InvalidArgumentError, match="budget"):
        attach_builtin_variants(folder, ["int4"], {"int4": {"budget": budget}})
    assert run_optimum_cli("onnx23", "variants", "attach", folder, "--variant", "int4", "--quant-budget", str(budget)) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quant-budget" in err[0], err


def test_export_refuses_a_bad_budget_before_exporting(tmp_path, capsys):
    from tiny_models import BUNDLED

    out = tmp_path / "out"
    code = run_optimum_cli("export", "onnx", "--dynamo", "--model", BUNDLED, "--variant", "int4", "--quant-budget", "0", out)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and not out.exists() and any("--quant-budget" in line for line in err), err


@pytest.mark.parametrize("bits,symmetric", [(4, False), (8, True)])
def test_probe_weights_in_the_initializer_layout_equal_the_dequantized_ones(bits, symmetric):
    from optimum_onnx23.variants.producers._nbits import dequantize, quantize_blockwise
    from optimum_onnx23.variants.producers._precision import _dequantize_nk, column_slice

    weight = np.random.default_rng(0).standard_normal((80, 48)).astype(np.float32)  # K not a whole number of blocks
    qw = quantize_blockwise(weight, bits, 32, symmetric)
    np.testing.assert_array_equal(_dequantize_nk(qw), dequantize(qw).T)
    np.testing.assert_array_equal(dequantize(column_slice(qw, 8, 40)), dequantize(qw)[:, 8:40])
