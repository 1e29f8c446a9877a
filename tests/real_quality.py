"""What the two real-checkpoint tiers (tests/test_real_variants.py: SmolLM2-135M-Instruct,
tests/test_real_gemma3.py: Gemma-3-270M) share: a session of one variant through the project's
own `ORTModelForCausalLM`, and the quality check against PyTorch on the evaluation split with the
issue's limits (main graph within 0.1% of PyTorch's perplexity with >= 99% top-1 agreement, int8
within +2% with >= 95%, int4 within +10%)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
from transformers import AutoConfig

from optimum_onnx23 import ORTModelForCausalLM
from optimum_onnx23.variants.quality import Score, onnx_logits, score
from optimum_onnx23.variants.runtime import create_session

__all__ = ["LIMITS", "session_model", "check_quality"]

# (max perplexity increase over PyTorch, min top-1 agreement with PyTorch)
LIMITS = {"main": (0.001, 0.99), "int8": (0.02, 0.95), "int4": (0.10, 0.75)}


def session_model(folder: Path, variant: str) -> ORTModelForCausalLM:
    """`variant` ("main": the main graph) of `folder/model.onnx` on onnxruntime's CPU provider with
    its default threads (conftest gives xdist sessions one; measured on SmolLM2: main, int8, int4
    27, 49, 38 s with the default, 46, 60, 57 s with one thread)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 0
    session, chosen = create_session(folder / "model.onnx", ["CPUExecutionProvider"], options, variant=variant)
    assert chosen == (None if variant == "main" else variant)
    return ORTModelForCausalLM(session, AutoConfig.from_pretrained(folder), model_path=folder / "model.onnx")


def check_quality(folder: Path, variant: str, windows, reference: Score) -> Score:
    """Score `variant` on `windows` against PyTorch's `reference` and assert `LIMITS[variant]`."""
    got = score(windows, onnx_logits(session_model(folder, variant)), reference.top1_ids)
    increase = got.perplexity / reference.perplexity - 1
    max_increase, min_agreement = LIMITS[variant]
    assert increase <= max_increase and got.agreement >= min_agreement, (
        f"{variant}: perplexity {got.perplexity:.3f} vs PyTorch {reference.perplexity:.3f} ({increase:+.2%}), "
        f"top-1 agreement {got.agreement:.1%} over {got.tokens} positions"
    )
    return got
