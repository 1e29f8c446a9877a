"""Quality and speed of each backend variant on a real checkpoint, read together: perplexity and
top-1 agreement with PyTorch on the evaluation split only (`optimum_onnx23/data/quality/eval`:
prose, code, chat, multilingual; the calibration split that quantization sees is disjoint from
it), and greedy decode tok/s.

    .venv/bin/python benchmarks/quality_bench.py [--checkpoint smollm2|gemma3|HF_FOLDER] [--work DIR] [--repeats 3]

Rows: PyTorch (fp32, the reference), our main graph, every built-in quantized variant (selected by
name in one file, through `ORTModelForCausalLM.forward` and `generate`), and onnxruntime-genai's
int4 builder on the same weights when onnxruntime-genai is installed (its model run by
onnxruntime for the perplexity, by onnxruntime-genai's generator for the speed). Decode: batch 1,
128-token prompt, 128 forced new tokens, best of `--repeats` interleaved rounds; ratios are against
our main graph in this run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ort-cpu-int8", "ort-cpu-int4"]
PROMPT, NEW = 128, 128


def real_checkpoint(name: str = "smollm2") -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    import real_checkpoint as script

    return script.prepare(checkpoint=name)


def prepare(checkpoint: Path, work: Path, atol: float) -> tuple[Path, Path | None]:
    """The export with every quantized variant attached, and onnxruntime-genai's int4 build (None
    without onnxruntime-genai); both made once per work folder."""
    from optimum_onnx23 import export
    from optimum_onnx23.variants import attach_builtin_variants

    exported = work / "onnx"
    marker = exported / ".variants-done"
    # Keyed by the exporter's and producers' code: a stale folder would measure the old variants.
    source = Path(__file__).resolve().parents[1] / "optimum_onnx23"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(source.rglob("*.py")))).hexdigest()
    if not marker.is_file() or marker.read_text().strip() != digest:
        shutil.rmtree(exported, ignore_errors=True)
        export(checkpoint, exported, atol=atol)
        start = time.perf_counter()
        report = attach_builtin_variants(exported, VARIANTS)
        for name, entry in report["variants"].items():
            print(f"attached {name}: +{entry['owned_bytes'] / 1e6:.1f} MB in {entry['seconds']:.0f} s", file=sys.stderr)
        print(f"variants attached in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        owned = {name: entry["owned_bytes"] for name, entry in report["variants"].items()}
        (exported / ".variants-report.json").write_text(json.dumps(owned))
        marker.write_text(digest)
    genai = None
    if importlib.util.find_spec("onnxruntime_genai") is not None:
        genai = work / "genai-int4"
        if not (genai / "genai_config.json").is_file():
            shutil.rmtree(genai, ignore_errors=True)
            subprocess.run(
                [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(genai),
                 "-p", "int4", "-e", "cpu", "-c", str(work / "genai-cache")],
                check=True, capture_output=True,
            )
    return exported, genai


class OnnxRow:
    """Our model through `ORTModelForCausalLM` with one variant forced (`main`: the main graph)."""

    def __init__(self, folder: Path, variant: str):
        import onnxruntime as ort
        from transformers import AutoConfig

        from optimum_onnx23.pipelines.modeling import ORTModelForCausalLM
        from optimum_onnx23.variants.runtime import create_session

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session, _ = create_session(folder / "model.onnx", ["CPUExecutionProvider"], options, variant=variant)
        self.model = ORTModelForCausalLM(session, AutoConfig.from_pretrained(folder), model_path=folder / "model.onnx")

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.model(ids[None], use_cache=False).logits[0]

    def generate(self, prompt: np.ndarray, new: int) -> None:
        self.model.generate(prompt[None], max_new_tokens=new, min_new_tokens=new, do_sample=False)


class TorchRow:
    def __init__(self, checkpoint: Path):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()

    def logits(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(ids)[None], use_cache=False).logits[0].numpy()

    def generate(self, prompt: np.ndarray, new: int) -> None:
        ids = self.torch.from_numpy(prompt)[None]
        with self.torch.no_grad():
            self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False)


class GenaiRow:
    """onnxruntime-genai's build: its graph run by onnxruntime for logits, its generator for speed."""

    def __init__(self, folder: Path):
        import onnxruntime as ort
        import onnxruntime_genai as og

        self.og = og
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.model = og.Model(str(folder))
        decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        self.kv_shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])

    def logits(self, ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), np.int64)}
        for name, info in self.inputs.items():
            if name.startswith("past_key_values"):
                feeds[name] = np.zeros(self.kv_shape, np.float32)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        return self.session.run(["logits"], feeds)[0][0]

    def generate(self, prompt: np.ndarray, new: int) -> None:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + new, min_length=len(prompt) + new, do_sample=False, batch_size=1)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(prompt.tolist())
        while not generator.is_done():
            generator.generate_next_token()


def decode_speed(rows: dict, prompt: np.ndarray, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` decode tok/s per row: (NEW - 1) / (t(NEW tokens) - t(1 token)), rounds interleaved."""
    best: dict[str, float] = {}
    for row in rows.values():
        row.generate(prompt, 2)  # warm-up
    for _ in range(repeats):
        for name, row in rows.items():
            start = time.perf_counter()
            row.generate(prompt, 1)
            first = time.perf_counter() - start
            start = time.perf_counter()
            row.generate(prompt, NEW)
            total = time.perf_counter() - start
            best[name] = max(best.get(name, 0.0), (NEW - 1) / (total - first))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="smollm2", help="smollm2 (default), gemma3 (the real checkpoints) or an HF folder")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "optimum-onnx23-bench" / "quality")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--atol", type=float, default=1e-3, help="export validation tolerance")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from optimum_onnx23.variants.quality import eval_windows, score

    checkpoint = real_checkpoint(args.checkpoint) if args.checkpoint in ("smollm2", "gemma3") else Path(args.checkpoint)
    if args.checkpoint != "smollm2":
        args.work = args.work / Path(args.checkpoint).name
    args.work.mkdir(parents=True, exist_ok=True)
    exported, genai = prepare(checkpoint, args.work, args.atol)
    windows = eval_windows(AutoTokenizer.from_pretrained(checkpoint), args.window)
    rows = {"PyTorch fp32": TorchRow(checkpoint), "main graph": OnnxRow(exported, "main")}
    rows.update({name: OnnxRow(exported, name) for name in VARIANTS})
    if genai is not None:
        rows["onnxruntime-genai int4"] = GenaiRow(genai)
    results: dict[str, dict] = {}
    reference = None
    for name, row in rows.items():
        start = time.perf_counter()
        s = score(windows, row.logits, None if reference is None else reference.top1_ids)
        reference = reference or s
        results[name] = {"perplexity": s.perplexity, "top1": s.agreement, "seconds": time.perf_counter() - start}
        print(f"scored {name}: {s.perplexity:.3f} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if not args.no_speed:
        prompt = windows[0][:PROMPT]
        for name, tok_s in decode_speed(rows, prompt, args.repeats).items():
            results[name]["decode_tok_s"] = tok_s
    base = results["PyTorch fp32"]["perplexity"]
    main_speed = results["main graph"].get("decode_tok_s")
    print(f"\n{len(windows)} windows of <= {args.window} tokens, {reference.tokens} scored positions; "
          f"decode: batch 1, {PROMPT}-token prompt, {NEW} new tokens, best of {args.repeats}\n")
    print("| model | perplexity | vs PyTorch | top-1 = PyTorch | decode tok/s | x main |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        top1 = "-" if r["top1"] is None else f"{r['top1']:.1%}"
        speed = r.get("decode_tok_s")
        speed_text = "-" if speed is None else f"{speed:.1f} | {speed / main_speed:.2f}"
        print(f"| {name} | {r['perplexity']:.3f} | {r['perplexity'] / base - 1:+.2%} | {top1} | {speed_text} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
