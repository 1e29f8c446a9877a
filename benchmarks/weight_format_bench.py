"""`--weight-format int4` quality on a real checkpoint: which lm_head width is sane.

The straight-to-int4 graph computes the fake-quantized PyTorch model to ~1e-6 (its export
validation, tests/test_weight_format.py), so the quality of each choice is measured on that
PyTorch model: perplexity on the evaluation split (`optimum_onnx23/data/quality/eval`, disjoint
from any calibration text) and top-1 agreement with the fp32 model, for the linears RTN int4
(block 32, asymmetric) with the lm_head fp32, int8 (symmetric) or int4; and the lm_head's bytes.

    .venv/bin/python benchmarks/weight_format_bench.py [--checkpoint ~/.cache/optimum-onnx23/smollm2-135m-instruct/hf]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from optimum_onnx23.exporters.passes.weight_format import BLOCK_SIZE, fake_quantized

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 512


def _windows(tokenizer) -> list[torch.Tensor]:
    out = []
    for path in sorted((ROOT / "optimum_onnx23/data/quality/eval").glob("*.txt")):
        ids = tokenizer(path.read_text(), return_tensors="pt").input_ids[0]
        out += [ids[i : i + WINDOW][None] for i in range(0, len(ids) - 16, WINDOW)]
    return out


def _evaluate(model, windows, reference_top1=None):
    nll, count, top1, agree = 0.0, 0, [], 0
    with torch.no_grad():
        for i, ids in enumerate(windows):
            logits = model(ids).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
            top1.append(logits.argmax(-1))
            if reference_top1 is not None:
                agree += (top1[-1] == reference_top1[i]).sum().item()
    return float(torch.exp(torch.tensor(nll / count))), top1, agree / count if reference_top1 is not None else 1.0


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path.home() / ".cache/optimum-onnx23/smollm2-135m-instruct/hf")
    args = parser.parse_args()
    torch.set_num_threads(2)
    windows = _windows(AutoTokenizer.from_pretrained(args.checkpoint))
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    ppl, reference, _ = _evaluate(model, windows)
    head = model.get_output_embeddings()
    fp32_head = head.weight.detach().clone()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.weight = torch.nn.Parameter(fake_quantized(module.weight, 4), requires_grad=False)
    n, k = fp32_head.shape
    rows = [("fp32 (PyTorch)", "-", ppl, 1.0)]
    for label, bits in (("fp32", None), ("int8", 8), ("int4", 4)):
        weight = fp32_head if bits is None else fake_quantized(fp32_head, bits)
        head.weight = torch.nn.Parameter(weight, requires_grad=False)  # untied: the embedding stays fp32
        nbytes = n * k * 4 if bits is None else n * k * bits // 8 + n * (k // BLOCK_SIZE) * (4 + (bits == 4) * 0.5)
        q_ppl, _, agree = _evaluate(model, windows, reference)
        rows.append((f"linears int4, lm_head {label}", f"{nbytes / 1e6:.0f}", q_ppl, agree))
    tokens = sum(w.shape[1] - 1 for w in windows)
    print(f"\n{args.checkpoint}: perplexity on {tokens} evaluation tokens ({len(windows)} windows of <= {WINDOW}), RTN int4 block {BLOCK_SIZE}")
    print(f"{'weights':<32}{'lm_head MB':>11}{'perplexity':>12}{'vs fp32':>9}{'top-1 = fp32':>14}")
    for label, mb, p, agree in rows:
        print(f"{label:<32}{mb:>11}{p:>12.3f}{p / ppl - 1:>+9.1%}{agree:>14.1%}")


if __name__ == "__main__":
    main()
