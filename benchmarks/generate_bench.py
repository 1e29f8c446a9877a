"""Generation speed of optimum-onnx23's onnxruntime runtime against transformers' PyTorch
`generate()` (and onnxruntime-genai when installed), measured in the same run.

Model: a SmolLM-135M-shaped random Llama (hidden 576, 30 layers, 9 heads, 3 kv heads, vocab
49152), fp32, CPU, batch 1. Every backend runs in its own subprocess (so peak RSS is its own) and
is driven end to end through a text pipeline: tokenization, the Python loop and decoding included.

    python benchmarks/generate_bench.py [--work DIR] [--new-tokens 128]

Definitions (identical for every row):
  decode tok/s  = (N - 1) / (t(N forced new tokens) - t(1 new token)), prompt of 32 tokens, N=128
  e2e tok/s     = N / t(N forced new tokens)
  TTFT 512      = t(1 new token) for a 512-token prompt (best of 3)
  beam-4 tok/s  = N / t(num_beams=4, N forced new tokens)
  ctx 1500      = decode tok/s with a 1,372-token prompt (1,500 positions at the end)
  peak RSS      = the subprocess's max resident set size after decode and beam-4 (one model loaded)
Each time is the best of 2-3 runs (the machine may be shared). Ratios are against PyTorch eager in the same run (for TTFT: our time / PyTorch's time). The export is `--logits last` (a prefill
computes the lm_head for the last position only); static caches hold 160 and 1,500 positions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import best, peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "optimum_onnx23" / "data" / "tiny-llama"
SMOLLM_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)
PROMPT, LONG_PROMPT, CONTEXT = 32, 512, 1500


# ---- setup (main process) ---------------------------------------------------------------------
def build_model(folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM_SHAPE)).eval()
    model.generation_config.pad_token_id = 3
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(BUNDLED).save_pretrained(folder)
    return folder


def export_once(source: Path, out: Path, *, cache: str = "dynamic", max_cache_len: int | None = None) -> Path:
    if (out / "export_report.json").exists():
        return out
    from optimum_onnx23.exporters import export

    export(source, out, cache=cache, max_cache_len=max_cache_len, logits="last", overwrite=True)
    return out


def write_genai_config(folder: Path) -> bool:
    """Describe the dynamic export to onnxruntime-genai (publisher's generator), if available."""
    try:
        from optimum_onnx23.publish.genai_config import make_genai_config
        from optimum_onnx23.publish.onnx_files import find_onnx_models
    except ImportError:
        return False
    files = find_onnx_models(folder)[0]
    config = json.loads((folder / "config.json").read_text())
    generation = json.loads((folder / "generation_config.json").read_text())
    genai = make_genai_config(files, files.name, config, generation)
    # numpy scalars from the graph reader -> plain JSON numbers
    (folder / "genai_config.json").write_text(json.dumps(genai, indent=2, default=lambda o: o.item()))
    return True


# ---- measurements (one subprocess per backend) -----------------------------------------------------
def prompt_text(tokenizer, length: int) -> str:
    """A text that the tokenizer turns into exactly `length` ids (special tokens included)."""
    words = [" onnx", " model", " graph", " token", " export"]
    text, i = "", 0
    while len(tokenizer(text)["input_ids"]) < length:
        candidate = text + words[i % len(words)]
        if len(tokenizer(candidate)["input_ids"]) > length:
            i += 1
            if i > 50:
                break
            continue
        text, i = candidate, i + 1
    return text


def run_case(case: str, args) -> dict:
    work = Path(args.work)
    new = args.new_tokens
    forced = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
    result: dict = {"case": case}
    if case == "genai":
        return run_genai(work / "onnx-dynamic", args)
    if case == "torch":
        from transformers import AutoModelForCausalLM
        from transformers import pipeline as hf_pipeline

        model = AutoModelForCausalLM.from_pretrained(work / "model").eval()
        pipe = hf_pipeline("text-generation", model=model, tokenizer=str(work / "model"))
    else:
        from optimum_onnx23 import pipeline

        folder = {"dynamic": "onnx-dynamic", "static": "onnx-static-160"}[case]
        pipe = pipeline("text-generation", model=work / folder, accelerator="ort")
    tok = pipe.tokenizer
    short, long_ = prompt_text(tok, PROMPT), prompt_text(tok, LONG_PROMPT)
    result["prompt_tokens"] = len(tok(short)["input_ids"])
    result["long_prompt_tokens"] = len(tok(long_)["input_ids"])
    call = lambda text, **kw: pipe(text, return_tensors=True, **kw)[0]["generated_token_ids"]  # noqa: E731
    call(short, max_new_tokens=4)  # warm-up
    t1 = best(lambda: call(short, max_new_tokens=1), 3)
    ids = []
    tn = best(lambda: ids.append(call(short, **forced)), 3)
    result["tokens"] = list(ids[-1][-new:])
    result["decode_tok_s"] = (new - 1) / (tn - t1)
    result["e2e_tok_s"] = new / tn
    result["beam4_tok_s"] = new / best(lambda: call(short, num_beams=4, **forced), 2)
    # Peak RSS of one model with its decode and beam-4 runs (before the static row opens its 2nd buffer size).
    result["peak_rss_mb"] = peak_rss_mb()
    if case == "static":  # the 160-position buffer cannot hold 512 tokens: the 1,500 one measures the rest
        del pipe, call
        from optimum_onnx23 import pipeline

        pipe = pipeline("text-generation", model=work / "onnx-static-1500", accelerator="ort")
        call = lambda text, **kw: pipe(text, return_tensors=True, **kw)[0]["generated_token_ids"]  # noqa: E731
        call(short, max_new_tokens=2)
        # Same 1,500-slot buffer, nearly empty: decode time must not depend on how much is filled.
        s1 = best(lambda: call(short, max_new_tokens=1), 2)
        sn = best(lambda: call(short, **forced), 2)
        result["static1500_short_decode_tok_s"] = (new - 1) / (sn - s1)
    result["ttft_512_s"] = best(lambda: call(long_, max_new_tokens=1), 3)
    if case != "torch":
        context = prompt_text(tok, CONTEXT - new)
        c1 = best(lambda: call(context, max_new_tokens=1), 2)
        cn = best(lambda: call(context, **forced), 2)
        result["ctx1500_decode_tok_s"] = (new - 1) / (cn - c1)
    return result


def run_genai(folder: Path, args) -> dict:
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    new = args.new_tokens
    model = og.Model(str(folder))
    tok = AutoTokenizer.from_pretrained(folder)  # same ids as the other rows

    def generate(text: str, max_new: int, beams: int = 1) -> list[int]:
        ids = tok(text)["input_ids"]
        params = og.GeneratorParams(model)
        params.set_search_options(
            max_length=len(ids) + max_new, min_length=len(ids) + max_new, num_beams=beams, do_sample=False, batch_size=1
        )
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        out = [int(t) for t in generator.get_sequence(0)]
        tok.decode(out[len(ids):])
        return out

    short, long_ = prompt_text(tok, PROMPT), prompt_text(tok, LONG_PROMPT)
    generate(short, 4)
    t1 = best(lambda: generate(short, 1), 3)
    ids = []
    tn = best(lambda: ids.append(generate(short, new)), 2)
    result = {"case": "genai", "tokens": ids[-1][-new:], "decode_tok_s": (new - 1) / (tn - t1), "e2e_tok_s": new / tn}
    result["ttft_512_s"] = best(lambda: generate(long_, 1), 3)
    try:
        result["beam4_tok_s"] = new / best(lambda: generate(short, new, beams=4), 1)
    except Exception as error:  # genai's beam search support varies by build
        result["beam4_error"] = f"{type(error).__name__}: {str(error)[:80]}"
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# ---- which op writes the static cache (measured, not assumed) ---------------------------------------
def kv_write_op_table(max_cache_len: int = CONTEXT, tensors: int = 60, steps: int = 200) -> None:
    """Per-decode-step time of writing one position into `tensors` [1, 3, N, 64] fp32 buffers bound
    in place (input and output are the same OrtValue), for the three standard ops that can do it."""
    import numpy as np
    import onnx_ir as ir
    import onnxruntime as ort

    shape = (1, 3, max_cache_len, 64)

    def graph_for(op: str) -> bytes:
        f32, i64 = ir.TensorType(ir.DataType.FLOAT), ir.TensorType(ir.DataType.INT64)
        update = ir.Value(name="update", type=f32, shape=ir.Shape([1, 3, 1, 64]))
        if op == "TensorScatter":
            index = ir.Value(name="index", type=i64, shape=ir.Shape([1]))
        elif op == "ScatterND":
            index = ir.Value(name="index", type=i64, shape=ir.Shape([1, 3, 1, 3]))
        else:
            index = ir.Value(name="index", type=i64, shape=ir.Shape([1, 3, 1, 64]))
        inputs, outputs, nodes = [update, index], [], []
        for i in range(tensors):
            cache = ir.Value(name=f"cache{i}", type=f32, shape=ir.Shape(shape))
            if op == "TensorScatter":
                node = ir.node(op, [cache, update, index], attributes={"axis": 2})
            elif op == "ScatterND":
                node = ir.node(op, [cache, index, update])
            else:
                node = ir.node(op, [cache, index, update], attributes={"axis": 2})
            node.outputs[0].name, node.outputs[0].type, node.outputs[0].shape = f"out{i}", f32, ir.Shape(shape)
            inputs.append(cache)
            outputs.append(node.outputs[0])
            nodes.append(node)
        opset = 24 if op == "TensorScatter" else 23
        model = ir.Model(ir.Graph(inputs, outputs, nodes=nodes, opset_imports={"": opset}), ir_version=10)
        return ir.serde.serialize_model(model).SerializeToString()

    position = max_cache_len // 2
    indices = {
        "TensorScatter": np.array([position], np.int64),
        "ScatterND": np.array([[[[0, h, position]] for h in range(3)]], np.int64),
        "ScatterElements": np.full((1, 3, 1, 64), position, np.int64),
    }
    print(f"\nKV write op, {tensors} buffers of {shape} fp32 bound in place, one position per step:\n")
    print(f"| op (opset) | us / step (all {tensors} writes) |")
    print("|---|---|")
    for op, index in indices.items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(graph_for(op), options, providers=["CPUExecutionProvider"])
        caches = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in range(tensors)]
        binding = session.io_binding()
        binding.bind_cpu_input("update", np.ones((1, 3, 1, 64), np.float32))
        binding.bind_cpu_input("index", index)
        for i, cache in enumerate(caches):
            binding.bind_ortvalue_input(f"cache{i}", cache)
            binding.bind_ortvalue_output(f"out{i}", cache)
        session.run_with_iobinding(binding)
        start = time.perf_counter()
        for _ in range(steps):
            session.run_with_iobinding(binding)
        per_step = (time.perf_counter() - start) / steps * 1e6
        opset = 24 if op == "TensorScatter" else 23
        print(f"| {op} ({opset}) | {per_step:.0f} |")
    megabytes = tensors * np.prod(shape) * 4 / 1e6
    print(f"(copying all buffers once would move {megabytes:.0f} MB per step)")


# ---- static vs dynamic, interleaved so that machine load hits both alike ------------------------------
def static_vs_dynamic_table(work: Path, steps: int = 25, rounds: int = 4) -> None:
    """Median ms per decode step of the model alone (no pipeline), dynamic and static caches run in
    alternating rounds of `steps` steps at a 160- and a 1,500-position context."""
    import numpy as np

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    print("\nDecode step, dynamic vs static cache, interleaved rounds (median ms / step):\n")
    print("| context | dynamic | static | static speed-up |")
    print("|---|---|---|---|")
    dynamic = ORTModelForCausalLM.from_pretrained(work / "onnx-dynamic")
    for static_name, prompt in (("onnx-static-160", PROMPT), ("onnx-static-1500", CONTEXT - 128)):
        static = ORTModelForCausalLM.from_pretrained(work / static_name)
        ids = np.random.RandomState(0).randint(4, 300, (1, prompt))
        states = {"dynamic": dynamic.new_state(1), "static": static.new_state(1)}
        times: dict[str, list[float]] = {name: [] for name in states}
        for state in states.values():
            state.step(ids)
        for _ in range(rounds):
            for name, state in states.items():
                start = time.perf_counter()
                for _ in range(steps):
                    state.step(np.array([[5]]))
                times[name].append((time.perf_counter() - start) / steps * 1000)
        d, s_ = statistics.median(times["dynamic"]), statistics.median(times["static"])
        print(f"| {prompt}-{prompt + steps * rounds} positions | {d:.1f} | {s_:.1f} | {d / s_:.2f}x |")
        del static, states


# ---- table -------------------------------------------------------------------------------------------
def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, dict], new: int) -> None:
    base = results.get("torch", {})
    rows = [
        ("PyTorch eager generate()", "torch"),
        ("optimum-onnx23 pipeline, dynamic cache", "dynamic"),
        ("optimum-onnx23 pipeline, static cache", "static"),
        ("onnxruntime-genai (same ONNX)", "genai"),
    ]

    def ratio(r, key, inverse=False):
        if key not in r or key not in base:
            return ""
        x = base[key] / r[key] if inverse else r[key] / base[key]
        return f" ({x:.2f}x)"

    header = "| backend | decode tok/s | e2e tok/s | TTFT 512 (s) | beam-4 tok/s | decode tok/s @1500 ctx | peak RSS (MB) |"
    print(header)
    print("|" + "---|" * 7)
    for label, key in rows:
        r = results.get(key)
        if r is None:
            continue
        if "error" in r:
            print(f"| {label} | {r['error']} ||||||")
            continue
        print(
            f"| {label} | {fmt(r.get('decode_tok_s'), '.1f')}{ratio(r, 'decode_tok_s')} | {fmt(r.get('e2e_tok_s'), '.1f')}"
            f" | {fmt(r.get('ttft_512_s'), '.3f')}{ratio(r, 'ttft_512_s')}"
            f" | {fmt(r.get('beam4_tok_s'), '.1f')}{ratio(r, 'beam4_tok_s')}{' ' + r['beam4_error'] if 'beam4_error' in r else ''}"
            f" | {fmt(r.get('ctx1500_decode_tok_s'), '.1f')} | {fmt(r.get('peak_rss_mb'), '.0f')} |"
        )
    dyn, sta = results.get("dynamic", {}), results.get("static", {})
    if "decode_tok_s" in dyn and "decode_tok_s" in sta:
        print(
            f"\nstatic / dynamic decode: {sta['decode_tok_s'] / dyn['decode_tok_s']:.2f}x at 160 positions, "
            f"{sta.get('ctx1500_decode_tok_s', float('nan')) / dyn.get('ctx1500_decode_tok_s', float('nan')):.2f}x at 1,500 positions"
        )
    if "static1500_short_decode_tok_s" in sta and "ctx1500_decode_tok_s" in sta:
        print(
            f"static 1,500-slot buffer: {sta['static1500_short_decode_tok_s']:.1f} tok/s with 32-160 slots filled, "
            f"{sta['ctx1500_decode_tok_s']:.1f} tok/s with 1,372-1,500 filled"
        )
    reference = results.get("torch", {}).get("tokens")
    for key in ("dynamic", "static", "genai"):
        if reference and results.get(key, {}).get("tokens") is not None:
            same = list(results[key]["tokens"]) == list(reference)
            print(f"greedy {new} tokens identical to PyTorch: {key}: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "optimum-onnx23-bench"))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], help="cases to skip: torch dynamic static genai")
    parser.add_argument("--prepare-only", action="store_true", help="build and export the models, measure nothing")
    args = parser.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args)))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = build_model(work / "model")
    export_once(source, work / "onnx-dynamic")
    export_once(source, work / "onnx-static-160", cache="static", max_cache_len=PROMPT + args.new_tokens)
    export_once(source, work / "onnx-static-1500", cache="static", max_cache_len=CONTEXT)
    if args.prepare_only:
        return
    cases = ["torch", "dynamic", "static"]
    if importlib.util.find_spec("onnxruntime_genai") is not None and write_genai_config(work / "onnx-dynamic"):
        cases.append("genai")
    results = {}
    for case in cases:
        if case in args.skip:
            continue
        print(f"running {case}...", file=sys.stderr, flush=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        proc = subprocess.run(
            [sys.executable, __file__, "--case", case, "--work", str(work), "--new-tokens", str(args.new_tokens)],
            capture_output=True,
            text=True,
            env=env,
        )
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results[case] = {"error": f"failed: {tail[:150]}"}
        else:
            results[case] = json.loads(line[len("RESULT ") :])
    print(f"\nSmolLM-135M-shaped random Llama, fp32, CPU ({os.cpu_count()} cores), batch 1, "
          f"{PROMPT}-token prompt, {args.new_tokens} forced new tokens\n")
    print_table(results, args.new_tokens)
    static_vs_dynamic_table(work)
    kv_write_op_table()


if __name__ == "__main__":
    main()
