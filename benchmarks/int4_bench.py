"""int4 on CPU, on the real checkpoint: decode tok/s and 512-token time to first token of our
`ort-cpu-int4` variant against our fp32 main graph, onnxruntime-genai's int4 builder on the same
weights and llama.cpp (llama-cpp-python) on the Q4_1 GGUF the checkpoint comes from, each when
installed; the read bandwidth of this machine measured in the same run; and where a decode step's
time goes (onnxruntime's profiler, per op type and per layer, plus the Python side).

    .venv/bin/python benchmarks/int4_bench.py [--work DIR] [--repeats 3] [--no-profile]

Batch 1, greedy, 128-token prompt, 128 forced new tokens; best of `--repeats` interleaved rounds.
Ratios are against the faster of onnxruntime-genai and llama.cpp (the issue's target: 1.5x) and
against our fp32 main graph for the prompt (target: TTFT <= 0.6x). llama-cpp-python is an optional
benchmark dependency (`pip install llama-cpp-python`, built from source), never a test dependency.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_bench import GenaiRow, OnnxRow, prepare, real_checkpoint  # noqa: E402

PROMPT, NEW, LONG = 128, 128, 512


class LlamaCppRow:
    """llama.cpp through llama-cpp-python on a GGUF file, fed our tokenizer's ids."""

    def __init__(self, gguf: Path, threads: int):
        from llama_cpp import Llama

        self.model = Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_batch=512, logits_all=False, verbose=False)

    def generate(self, prompt: np.ndarray, new: int) -> None:
        self.model.reset()
        self.model.eval(prompt.tolist())
        for _ in range(new - 1):  # the prompt's logits give the first token
            token = int(np.argmax(self.model.scores[self.model.n_tokens - 1]))
            self.model.eval([token])


def best_times(rows: dict, prompt: np.ndarray, long_prompt: np.ndarray, repeats: int) -> dict[str, dict]:
    """Per row: decode tok/s = (NEW - 1) / (t(NEW) - t(1)) and the 512-token TTFT, best of `repeats`."""
    out = {name: {"decode_tok_s": 0.0, "ttft_512_s": float("inf")} for name in rows}
    for row in rows.values():
        row.generate(prompt[:16], 2)  # warm-up
    for _ in range(repeats):
        for name, row in rows.items():
            start = time.perf_counter()
            row.generate(prompt, 1)
            first = time.perf_counter() - start
            start = time.perf_counter()
            row.generate(prompt, NEW)
            total = time.perf_counter() - start
            start = time.perf_counter()
            row.generate(long_prompt, 1)
            ttft = time.perf_counter() - start
            out[name]["decode_tok_s"] = max(out[name]["decode_tok_s"], (NEW - 1) / (total - first))
            out[name]["ttft_512_s"] = min(out[name]["ttft_512_s"], ttft)
    return out


def read_bandwidth(megabytes: int, repeats: int = 20) -> float:
    """GB/s onnxruntime's fp32 GEMV (1 x K @ K x N, default threads) reads a `megabytes` weight with."""
    import onnx_ir as ir
    import onnxruntime as ort

    k = 2048
    n = megabytes * 1_000_000 // (4 * k)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, k]))
    w = ir.Value(name="w", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([k, n]))
    node = ir.node("MatMul", [x, w])
    node.outputs[0].name = "y"
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x, w], node.outputs, nodes=[node], opset_imports={"": 21})
    session = ort.InferenceSession(ir.serde.serialize_model(ir.Model(graph, ir_version=10)).SerializeToString(), providers=["CPUExecutionProvider"])
    weight = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    feeds = {"x": np.ones((1, k), np.float32), "w": weight}
    binding = session.io_binding()
    binding.bind_ortvalue_input("w", ort.OrtValue.ortvalue_from_numpy(weight))
    binding.bind_cpu_input("x", feeds["x"])
    binding.bind_output("y")
    session.run_with_iobinding(binding)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        best = min(best, time.perf_counter() - start)
    return weight.nbytes / best / 1e9


def _profiled_model(folder: Path, variant: str):
    import onnxruntime as ort
    from transformers import AutoConfig

    from optimum_onnx23.pipelines.modeling import ORTModelForCausalLM
    from optimum_onnx23.variants.runtime import create_session

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session, _ = create_session(folder / "model.onnx", ["CPUExecutionProvider"], options, variant=variant)
    return session, ORTModelForCausalLM(session, AutoConfig.from_pretrained(folder), model_path=folder / "model.onnx")


def _profile_events(session) -> tuple[list[dict], list[dict]]:
    """(session runs, kernel events) of the profile onnxruntime wrote for `session`."""
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return runs, kernels


def _by_op(nodes: list[dict], count: int) -> tuple[list, dict]:
    by_op, calls, by_layer = collections.Counter(), collections.Counter(), collections.Counter()
    for event in nodes:
        op = event["args"].get("op_name", "?")
        by_op[op] += event["dur"]
        calls[op] += 1
        layer = re.search(r"layers\.(\d+)/", event["name"])
        by_layer[int(layer.group(1)) if layer else -1] += event["dur"]
    ops = [(op, d / count / 1000, calls[op] / count) for op, d in by_op.most_common()]
    return ops, {k: v / count / 1000 for k, v in sorted(by_layer.items())}


def profile_decode(folder: Path, variant: str, prompt: np.ndarray, steps: int = 32) -> dict:
    """onnxruntime's profile of `steps` decode steps through our `generate()`: kernel time per op
    type and per layer, and how much of a step is outside the kernels (session overhead, Python)."""
    session, model = _profiled_model(folder, variant)
    start = time.perf_counter()
    model.generate(prompt[None], max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False)
    wall = time.perf_counter() - start
    runs, kernels = _profile_events(session)
    prefill_end = runs[0]["ts"] + runs[0]["dur"]
    nodes = [e for e in kernels if e["ts"] > prefill_end]
    count = len(runs) - 1
    ops, layers = _by_op(nodes, count)
    return {
        "steps": count, "run_ms": sum(r["dur"] for r in runs[1:]) / count / 1000,
        "kernel_ms": sum(ms for _, ms, _ in ops), "nodes": len(nodes) / count,
        "wall_ms": (wall - runs[0]["dur"] / 1e6) / count * 1000, "ops": ops, "layers": layers,
    }


def profile_prefill(folder: Path, variant: str, prompt: np.ndarray, repeats: int = 2) -> dict:
    """Kernel time per op type of one `len(prompt)`-token prefill (the best of `repeats` runs)."""
    session, model = _profiled_model(folder, variant)
    for _ in range(repeats):
        model.generate(prompt[None], max_new_tokens=1, do_sample=False)
    runs, kernels = _profile_events(session)
    best_run = min(runs, key=lambda r: r["dur"])
    nodes = [e for e in kernels if best_run["ts"] <= e["ts"] <= best_run["ts"] + best_run["dur"]]
    ops, _ = _by_op(nodes, 1)
    return {"run_ms": best_run["dur"] / 1000, "ops": dict((op, ms) for op, ms, _ in ops)}


def print_profile(name: str, p: dict) -> None:
    print(f"\n{name}: {p['steps']} decode steps; per step: wall {p['wall_ms']:.2f} ms (our generate loop), "
          f"session run {p['run_ms']:.2f} ms, kernels {p['kernel_ms']:.2f} ms, {p['nodes']:.0f} nodes\n")
    print("| op type | ms / step | calls / step | us / call | share of kernels |")
    print("|---|---|---|---|---|")
    for op, ms, calls in p["ops"][:10]:
        print(f"| {op} | {ms:.2f} | {calls:.0f} | {1000 * ms / calls:.1f} | {ms / p['kernel_ms']:.1%} |")
    layers = [v for k, v in p["layers"].items() if k >= 0]
    if layers:
        print(f"\nper layer (ms/step): min {min(layers):.3f}, median {np.median(layers):.3f}, max {max(layers):.3f} "
              f"over {len(layers)} layers; outside the layers (embedding, final norm, lm_head): {p['layers'].get(-1, 0):.2f}")


def print_floors(decode: dict, prefill: dict, rival: float | None, main_ttft: float) -> None:
    """What the targets would need of the matmul kernels alone, from the profiles of this run."""
    nbits = dict((op, ms) for op, ms, _ in decode["ort-cpu-int4"]["ops"]).get("MatMulNBits", 0.0)
    print("\nFloors, from the profiles above (the profiler adds little per kernel; its totals are upper bounds of what kernels cost):")
    if rival and nbits:
        print(f"- decode: the int4 variant's MatMulNBits kernels alone take {nbits:.2f} ms a step, so even with every other "
              f"op, the session and Python free it could decode at most {1000 / nbits:.0f} tok/s; 1.5x the best rival is "
              f"{1.5 * rival:.0f} tok/s, {1000 / (1.5 * rival):.2f} ms a token.")
    int4_mm = prefill["ort-cpu-int4"]["ops"].get("MatMulNBits", 0.0)
    fp32_mm = prefill["main"]["ops"].get("MatMul", 0.0)
    print(f"- prefill ({LONG} tokens): MatMulNBits kernels {int4_mm:.0f} ms in the int4 variant against {fp32_mm:.0f} ms of "
          f"MatMul kernels in the fp32 graph (whole runs {prefill['ort-cpu-int4']['run_ms']:.0f} and "
          f"{prefill['main']['run_ms']:.0f} ms); the TTFT target, 0.6x the fp32 graph's, is {600 * main_ttft:.0f} ms.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "optimum-onnx23-bench" / "quality")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--atol", type=float, default=1e-3)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from optimum_onnx23.variants.quality import eval_windows

    checkpoint = args.checkpoint or real_checkpoint()
    args.work.mkdir(parents=True, exist_ok=True)
    exported, genai = prepare(checkpoint, args.work, args.atol)
    windows = eval_windows(AutoTokenizer.from_pretrained(checkpoint), LONG)
    long_prompt = next(w for w in windows if len(w) == LONG)
    prompt = long_prompt[:PROMPT]
    rows = {"ours fp32 main graph": OnnxRow(exported, "main"), "ours ort-cpu-int4": OnnxRow(exported, "ort-cpu-int4"),
            "ours ort-cpu-int8": OnnxRow(exported, "ort-cpu-int8")}
    if genai is not None:
        rows["onnxruntime-genai int4"] = GenaiRow(genai)
    gguf = checkpoint.parent / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if importlib.util.find_spec("llama_cpp") is not None and gguf.is_file():
        rows["llama.cpp Q4_1"] = LlamaCppRow(gguf, os.cpu_count() or 1)
    else:
        print("llama.cpp row skipped: llama-cpp-python is not installed" if gguf.is_file() else f"no {gguf}", file=sys.stderr)
    bandwidth = {"dram": read_bandwidth(1024), "l3": read_bandwidth(64)}
    results = best_times(rows, prompt, long_prompt, args.repeats)
    int4_bytes = json.loads((exported / ".variants-report.json").read_text())["ort-cpu-int4"] if (exported / ".variants-report.json").is_file() else None
    rivals = [results[n]["decode_tok_s"] for n in ("onnxruntime-genai int4", "llama.cpp Q4_1") if n in results]
    rival = max(rivals) if rivals else None
    main_ttft = results["ours fp32 main graph"]["ttft_512_s"]
    print(f"\nSmolLM2-135M-Instruct, CPU ({os.cpu_count()} cores), batch 1, {PROMPT}-token prompt, {NEW} new tokens, "
          f"best of {args.repeats}; fp32 GEMV read bandwidth {bandwidth['dram']:.1f} GB/s over 1 GB, "
          f"{bandwidth['l3']:.1f} GB/s over 64 MB (cache-resident)\n")
    print("| model | decode tok/s | x best rival | 512-token TTFT s | x fp32 main |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        vs = "-" if rival is None else f"{r['decode_tok_s'] / rival:.2f}"
        print(f"| {name} | {r['decode_tok_s']:.1f} | {vs} | {r['ttft_512_s']:.3f} | {r['ttft_512_s'] / main_ttft:.2f} |")
    if int4_bytes:
        print(f"\nint4 variant weights read per token: {int4_bytes / 1e6:.1f} MB -> bandwidth bound "
              f"{bandwidth['dram'] * 1e9 / int4_bytes:.0f} tok/s (DRAM), {bandwidth['l3'] * 1e9 / int4_bytes:.0f} tok/s (cache)")
    if not args.no_profile:
        decode = {}
        for name, variant in (("ours ort-cpu-int4", "ort-cpu-int4"), ("ours fp32 main graph", "main")):
            decode[variant] = profile_decode(exported, variant, prompt)
            print_profile(name, decode[variant])
        prefill = {variant: profile_prefill(exported, variant, long_prompt) for variant in ("ort-cpu-int4", "main")}
        print_floors(decode, prefill, rival, main_ttft)


if __name__ == "__main__":
    main()
