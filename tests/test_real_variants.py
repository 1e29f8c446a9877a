"""Quantized variants on the real checkpoint (SmolLM2-135M-Instruct), through the project's own
`ORTModelForCausalLM.forward`, against PyTorch on the same weights: perplexity and top-1 agreement
on the bundled evaluation texts (prose and code), as benchmarks/quality_bench.py scores them. Limits, from the issue: main graph within 0.1% of PyTorch's perplexity,
`ort-cpu-int8` within +2% with >= 95% top-1 agreement, `ort-cpu-int4` within +10%."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23 import ORTModelForCausalLM
from optimum_onnx23.variants.quality import eval_windows, onnx_logits, score, torch_logits
from optimum_onnx23.variants.runtime import create_session

pytestmark = [pytest.mark.real_checkpoint, pytest.mark.usefixtures("quiet_onnxruntime")]
# (max perplexity increase over PyTorch, min top-1 agreement with PyTorch)
LIMITS = {"main": (0.001, 0.99), "ort-cpu-int8": (0.02, 0.95), "ort-cpu-int4": (0.10, 0.75)}


@pytest.fixture(scope="module")
def with_variants(real_variants_dir) -> tuple[Path, dict]:
    return real_variants_dir  # int8, int4 and their portable forms (conftest: shared with the OpenVINO and publish tests)


@pytest.fixture(scope="module")
def windows(real_checkpoint):
    # The quality bench's texts and 512-token windows (6,645 scored positions of prose and code):
    # the limits are stated on those; a 1,500-position subset measured int4 at +10.2% where the
    # whole set gives +8.5%.
    return eval_windows(AutoTokenizer.from_pretrained(real_checkpoint))


@pytest.fixture(scope="module")
def reference(real_checkpoint, windows):
    model = AutoModelForCausalLM.from_pretrained(real_checkpoint, dtype=torch.float32).eval()
    return score(windows, torch_logits(model))


@pytest.mark.parametrize("variant", list(LIMITS))
def test_variant_quality_against_pytorch(with_variants, windows, reference, variant):
    folder, _ = with_variants
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime's default threads (conftest gives xdist sessions one): 6,645 positions in windows of 512
    # gain more from both cores than they lose beside the other worker (measured: main, int8, int4
    # 27, 49, 38 s with the default; 46, 60, 57 s with one thread).
    options.intra_op_num_threads = 0
    session, chosen = create_session(folder / "model.onnx", ["CPUExecutionProvider"], options, variant=variant)
    assert chosen == (None if variant == "main" else variant)
    model = ORTModelForCausalLM(session, AutoConfig.from_pretrained(folder), model_path=folder / "model.onnx")
    got = score(windows, onnx_logits(model), reference.top1_ids)
    increase = got.perplexity / reference.perplexity - 1
    max_increase, min_agreement = LIMITS[variant]
    assert increase <= max_increase and got.agreement >= min_agreement, (
        f"{variant}: perplexity {got.perplexity:.3f} vs PyTorch {reference.perplexity:.3f} ({increase:+.2%}), "
        f"top-1 agreement {got.agreement:.1%}"
    )


def test_variants_report_what_they_quantized(with_variants):
    _, report = with_variants
    int4, int8 = report["variants"]["ort-cpu-int4"], report["variants"]["ort-cpu-int8"]
    # int8: one MatMulNBits per linear layer (211) + the residual Skip-norms (60).
    assert int8["ops"] == ["com.microsoft::MatMulNBits", "com.microsoft::SkipSimplifiedLayerNormalization"]
    assert int8["nodes"] == 211 + 60
    # int4: Q/K/V and gate/up packed (4 MatMulNBits a layer + the lm_head), each packed output split
    # back (a Split and its sizes Constant), + the Skip-norms.
    assert int4["ops"] == ["ai.onnx::Constant", "ai.onnx::Split", "com.microsoft::MatMulNBits", "com.microsoft::SkipSimplifiedLayerNormalization"]
    assert int4["nodes"] == (30 * 4 + 1) + 30 * 2 * 2 + 60
    # int8: 1 byte + a float32 scale per 32 weights. int4: half a byte + scale + zero point per 32,
    # with the packed Q/K/V and the MLP down projections in int8 (the lm_head int4).
    assert 145e6 < int8["owned_bytes"] < 155e6 and 100e6 < int4["owned_bytes"] < 112e6
