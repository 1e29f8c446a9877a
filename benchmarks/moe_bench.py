"""Mixture-of-Experts generation speed: the exported standard-op graph (one `If` per expert), the
other experts forms exporters/tracing/experts.py has (one `If` over gathered or all experts, each alone), and
the `ort-cpu-moe` variant, against transformers' PyTorch eager `generate()` in the same run.

Model: a Mixtral-shaped random MoE (hidden 512, 8 layers, 8 heads / 2 kv heads, 8 experts of
intermediate 1024, top-2, vocab 32000), fp32, CPU, batch 1. Every row runs in its own subprocess,
one after the other, driven through `generate()` on token ids (no tokenizer).

    python benchmarks/moe_bench.py [--work DIR] [--new-tokens 64]

Definitions (identical for every row):
  decode tok/s = (N - 1) / (t(N forced new tokens) - t(1 new token)), prompt of 32 tokens, N=64
  TTFT 512     = t(1 new token) for a 512-token prompt
  beam-4 tok/s = N / t(num_beams=4, N forced new tokens): 4 rows per decode step
Each time is the best of 3 runs (2 for TTFT and beam-4): the machine may be shared. Ratios are
against PyTorch eager in the same run (TTFT: PyTorch's time / ours, so > 1 is faster), and for the
variant also against the main graph. Exports use `--logits last`.
Measured table and what it means: docs/moe.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _common import best, peak_rss_mb

MOE_SHAPE = dict(
    hidden_size=512,
    intermediate_size=1024,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    num_local_experts=8,
    num_experts_per_tok=2,
    vocab_size=32000,
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)
PROMPT, LONG_PROMPT = 32, 512
# Row -> (export folder, experts form traced, variant attached).
ONNX_ROWS = {
    "onnx": ("onnx-auto", "auto", None),
    "onnx-if": ("onnx-gather-or-dense", "gather_or_dense", None),
    "onnx-gather": ("onnx-gather", "gather", None),
    "onnx-dense": ("onnx-dense", "dense", None),
    "onnx-moe-variant": ("onnx-auto-ort-cpu-moe", "auto", "ort-cpu-moe"),
}
LABELS = {
    "torch": "PyTorch eager generate() (transformers' default experts: grouped_mm)",
    "torch-loop": "PyTorch eager generate(), experts_implementation=eager (loop over experts hit)",
    "onnx": "ONNX main graph: one If per expert (taken when a row selected it)",
    "onnx-if": "ONNX, If(rows*k < experts: gathered, else all experts) (the form beyond 16 experts)",
    "onnx-gather": "ONNX, gathered experts only",
    "onnx-dense": "ONNX, all experts only",
    "onnx-moe-variant": "ONNX + ort-cpu-moe variant (com.microsoft::MoE)",
}


# ---- setup (main process) -------------------------------------------------------------------------
def build_model(folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(**MOE_SHAPE)).eval()
    model.generation_config.pad_token_id = 3
    model.save_pretrained(folder)
    return folder


def export_form(source: Path, out: Path, form: str, variant: str | None) -> dict:
    """Export once per form (the form is a trace-time choice of exporters/tracing/experts.py); attach a variant to a copy."""
    if variant is not None:
        base = out.parent / ONNX_ROWS["onnx"][0]
        if not (out / "export_report.json").exists():
            from optimum_onnx23.variants import attach_builtin_variants

            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(base, out)
            report = attach_builtin_variants(out, [variant])
            (out / "variant_report.json").write_text(json.dumps(report))
        return json.loads((out / "variant_report.json").read_text())
    if not (out / "export_report.json").exists():
        from optimum_onnx23.exporters import export
        from optimum_onnx23.exporters.tracing import experts

        experts.DEFAULT_FORM = form
        try:
            export(source, out, logits="last", overwrite=True)
        finally:
            experts.DEFAULT_FORM = "auto"
    return json.loads((out / "export_report.json").read_text())


# ---- measurements (one subprocess per row) ----------------------------------------------------------
def run_case(case: str, args) -> dict:
    import torch

    work = Path(args.work)
    new = args.new_tokens
    if case.startswith("torch"):
        from transformers import AutoModelForCausalLM

        kwargs = {"experts_implementation": "eager"} if case == "torch-loop" else {}
        model = AutoModelForCausalLM.from_pretrained(work / "model", **kwargs).eval()
        implementation = model.config._experts_implementation
    else:
        from optimum_onnx23.pipelines import ORTModelForCausalLM

        model = ORTModelForCausalLM.from_pretrained(work / ONNX_ROWS[case][0])
        implementation = None
    generator = torch.Generator().manual_seed(0)
    short = torch.randint(4, MOE_SHAPE["vocab_size"], (1, PROMPT), generator=generator)
    long_ = torch.randint(4, MOE_SHAPE["vocab_size"], (1, LONG_PROMPT), generator=generator)

    def call(ids, max_new_tokens, **kw):
        with torch.no_grad():
            return model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=3, **kw,
            )

    call(short, 4)  # warm-up
    t1 = best(lambda: call(short, 1), 3)
    outputs = []
    tn = best(lambda: outputs.append(call(short, new)), 3)
    result = {"case": case, "experts_implementation": implementation, "tokens": outputs[-1][0, -new:].tolist()}
    result["decode_tok_s"] = (new - 1) / (tn - t1)
    result["ttft_512_s"] = best(lambda: call(long_, 1), 2)
    result["beam4_tok_s"] = new / best(lambda: call(short, new, num_beams=4), 2)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# ---- table -------------------------------------------------------------------------------------------
def print_table(results: dict[str, dict], reports: dict[str, dict]) -> None:
    base, main = results.get("torch", {}), results.get("onnx", {})

    def ratio(r, key, against, inverse=False):
        if key not in r or key not in against:
            return ""
        x = against[key] / r[key] if inverse else r[key] / against[key]
        return f" ({x:.2f}x)"

    print("| row | decode tok/s (x PyTorch) | TTFT 512 s (x PyTorch) | beam-4 tok/s (x PyTorch) | peak RSS MB |")
    print("|---|---|---|---|---|")
    for key, label in LABELS.items():
        r = results.get(key)
        if r is None:
            continue
        if "error" in r:
            print(f"| {label} | {r['error']} ||||")
            continue
        print(
            f"| {label} | {r['decode_tok_s']:.1f}{ratio(r, 'decode_tok_s', base)} | {r['ttft_512_s']:.3f}"
            f"{ratio(r, 'ttft_512_s', base, inverse=True)} | {r['beam4_tok_s']:.1f}{ratio(r, 'beam4_tok_s', base)} | {r['peak_rss_mb']:.0f} |"
        )
    variant = results.get("onnx-moe-variant", {})
    if "decode_tok_s" in variant and "decode_tok_s" in main:
        print(
            f"\nort-cpu-moe variant vs the main graph: decode {variant['decode_tok_s'] / main['decode_tok_s']:.2f}x, "
            f"TTFT 512 {main['ttft_512_s'] / variant['ttft_512_s']:.2f}x, beam-4 {variant['beam4_tok_s'] / main['beam4_tok_s']:.2f}x"
        )
    for form in ("onnx-if", "onnx-gather", "onnx-dense"):
        r = results.get(form, {})
        if "decode_tok_s" in r and "decode_tok_s" in main:
            print(
                f"{form[5:]} form vs the main graph: decode {r['decode_tok_s'] / main['decode_tok_s']:.2f}x, "
                f"TTFT 512 {main['ttft_512_s'] / r['ttft_512_s']:.2f}x, beam-4 {r['beam4_tok_s'] / main['beam4_tok_s']:.2f}x"
            )
    if "variant" in reports:
        added = reports["variant"]["variants"]["ort-cpu-moe"]["data_bytes_added"]
        before = sum(reports["variant"]["files_before"].values())
        print(f"ort-cpu-moe adds {added / 1e6:.1f} MB to the files ({added / before:.0%}): its re-laid-out fp32 expert weights")
    reference = base.get("tokens")
    for key in ONNX_ROWS:
        if reference and results.get(key, {}).get("tokens") is not None:
            same = results[key]["tokens"] == reference
            print(f"greedy tokens identical to PyTorch: {key}: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "optimum-onnx23-moe-bench"))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], help=f"rows to skip: {' '.join(LABELS)}")
    parser.add_argument("--prepare-only", action="store_true", help="build and export the models, measure nothing")
    args = parser.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args)))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = build_model(work / "model")
    reports = {}
    for key, (folder, form, variant) in ONNX_ROWS.items():
        if key not in args.skip or key == "onnx":
            print(f"exporting {key}...", file=sys.stderr, flush=True)
            reports["variant" if variant else key] = export_form(source, work / folder, form, variant)
    if args.prepare_only:
        return
    results = {}
    for case in LABELS:
        if case in args.skip:
            continue
        print(f"running {case}...", file=sys.stderr, flush=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        proc = subprocess.run(
            [sys.executable, __file__, "--case", case, "--work", str(work), "--new-tokens", str(args.new_tokens)],
            capture_output=True, text=True, env=env,
        )
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results[case] = {"error": f"failed: {tail[:150]}"}
        else:
            results[case] = json.loads(line[len("RESULT ") :])
    load = os.getloadavg()[0]
    print(
        f"\nMixtral-shaped random MoE (hidden 512, 8 layers, 8 experts top-2, intermediate 1024, vocab 32000), fp32, "
        f"CPU ({os.cpu_count()} cores, load average {load:.1f} at the end), batch 1, {args.new_tokens} new tokens\n"
    )
    print_table(results, reports)


if __name__ == "__main__":
    main()
