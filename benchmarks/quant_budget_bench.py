"""What int4's quality budget buys and costs, per real checkpoint: for each `--quant-budget`, the
bits the measurement chose, the owned bytes, the perplexity change it measured on held-out
calibration text, and on the evaluation split (which calibration never saw) perplexity and top-1
agreement against PyTorch and greedy decode tok/s; beside them the main graph, int8 and today's
int4 (the fixed list: Q/K/V and MLP down int8, `budget=None`), all in the same run.

    .venv/bin/python benchmarks/quant_budget_bench.py [--checkpoint smollm2|gemma3|HF_FOLDER] \
        [--budgets 0.05,0.10,0.20] [--window 512] [--max-windows N] [--repeats 3] [--json FILE]

Each int4 budget is attached to its own copy of the export (a file carries one `int4`); the
sensitivities are measured once and cached (`~/.cache/optimum-onnx23/precision`), so later budgets
only measure their candidates. Decode: batch 1, 128-token prompt, 128 forced new tokens, best of
`--repeats` interleaved rounds; speed ratios are against today's int4 in this run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_bench import NEW, PROMPT, OnnxRow, TorchRow, decode_speed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def checkpoint_folder(name: str) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    import real_checkpoint as script

    if name in script.CHECKPOINTS:
        return script.prepare(checkpoint=name)
    return Path(name)


def attach(base: Path, folder: Path, names: list[str], budget: float | None) -> dict:
    from optimum_onnx23.variants import attach_builtin_variants

    done = folder / ".bench-report.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base, folder)
    start = time.perf_counter()
    options = {n: {"budget": budget} for n in ("int4", "ort-cpu-int4")}
    report = attach_builtin_variants(folder, names, options)
    print(f"attached {names} (budget {budget}) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    done.write_text(json.dumps(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="smollm2")
    parser.add_argument("--budgets", default="0.05,0.10,0.20")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "optimum-onnx23-bench" / "quant-budget")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=None, help="first N windows of each evaluation file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from optimum_onnx23 import export
    from optimum_onnx23.variants.quality import eval_windows, score

    checkpoint = checkpoint_folder(args.checkpoint)
    work = args.work / Path(args.checkpoint).name
    base = work / "onnx"
    if not (base / "export_report.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        export(checkpoint, base)
    budgets = [float(b) for b in args.budgets.split(",") if b]
    rows_spec: dict[str, tuple[Path, str, dict]] = {}
    report = attach(base, work / "fixed", ["int8", "int4"], None)
    rows_spec["main graph"] = (work / "fixed", "main", {})
    rows_spec["int8"] = (work / "fixed", "int8", report["variants"]["int8"])
    rows_spec["int4 fixed list (before)"] = (work / "fixed", "int4", report["variants"]["int4"])
    for budget in budgets:
        report = attach(base, work / f"budget-{budget:g}", ["int4"], budget)
        rows_spec[f"int4 budget {budget:g}"] = (work / f"budget-{budget:g}", "int4", report["variants"]["int4"])

    windows = eval_windows(AutoTokenizer.from_pretrained(checkpoint), args.window, max_windows=args.max_windows)
    results: dict[str, dict] = {}
    torch_row = TorchRow(checkpoint)
    reference = score(windows, torch_row.logits)
    results["PyTorch fp32"] = {"perplexity": reference.perplexity}
    del torch_row
    rows = {}
    for name, (folder, variant, entry) in rows_spec.items():
        row = OnnxRow(folder, variant)
        if not args.no_speed:  # kept for the interleaved decode rounds (Gemma: ~1 GB a session)
            rows[name] = row
        start = time.perf_counter()
        s = score(windows, row.logits, reference.top1_ids)
        results[name] = {"perplexity": s.perplexity, "top1": s.agreement, "owned_bytes": entry.get("owned_bytes"),
                         "quantization": entry.get("quantization")}
        print(f"scored {name}: {s.perplexity:.3f} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        del row
    if not args.no_speed:
        for name, tok_s in decode_speed(rows, windows[0][:PROMPT], args.repeats).items():
            results[name]["decode_tok_s"] = tok_s
    base_ppl = reference.perplexity
    today = results["int4 fixed list (before)"].get("decode_tok_s")
    print(f"\n{Path(args.checkpoint).name}: evaluation split, {len(windows)} windows of <= {args.window} tokens, "
          f"{reference.tokens} positions; decode batch 1, {PROMPT}-token prompt, {NEW} new, best of {args.repeats}\n")
    print("| row | int8 groups (of all) | owned MB | held-out ppl (calibration) | eval ppl vs PyTorch | top-1 | decode tok/s | x int4 before |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        q = r.get("quantization") or {}
        groups = f"{q['int8_groups']} of {len(q['bits'])}" if q else "-"
        held = f"{100 * q['perplexity_change']:+.2f}%" if q else "-"
        owned = f"{r['owned_bytes'] / 1e6:.1f}" if r.get("owned_bytes") else "-"
        change = f"{r['perplexity'] / base_ppl - 1:+.2%}" if name != "PyTorch fp32" else f"{base_ppl:.3f}"
        top1 = "-" if r.get("top1") is None else f"{r['top1']:.1%}"
        speed = r.get("decode_tok_s")
        ratio = "-" if speed is None or not today else f"{speed / today:.2f}"
        print(f"| {name} | {groups} | {owned} | {held} | {change} | {top1} | {'-' if speed is None else f'{speed:.1f}'} | {ratio} |")
    for name, r in results.items():
        q = r.get("quantization")
        if q:
            print(f"{name}: {json.dumps(q['groups'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
