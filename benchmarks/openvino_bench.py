"""Our pipeline against OpenVINO on CPU, on the real checkpoint, in one interleaved run: decode
tok/s and 512-token time to first token of

- our `ORTModelForCausalLM` on onnxruntime's CPU provider: fp32 main graph, int4 as
  `com.microsoft::MatMulNBits` (`ort-cpu-int4`), int4 as standard `DequantizeLinear` + `MatMul`
  (`int4`, which onnxruntime fuses into the same kernels);
- the same on onnxruntime's OpenVINO provider (fp32 and int4 folders, the variant its sessions
  select), from `.venv-openvino` (scripts/openvino_env.sh) when present, else the rows say
  `skipped: .venv-openvino absent`;
- OpenVINO GenAI `LLMPipeline` on optimum-intel's fp32 and int4 exports of the same checkpoint
  (`optimum-cli export openvino --weight-format int4 --group-size 64`), with
  `INFERENCE_PRECISION_HINT=f32` and with OpenVINO's default (bf16 on CPUs that have it), from
  `.venv-ovgenai` (scripts/openvino_genai_env.sh, made on first use).

    .venv/bin/python benchmarks/openvino_bench.py [--work DIR] [--onnx FOLDER] [--repeats 3]

Batch 1, greedy, forced new tokens. Decode tok/s = (NEW - 1) / (t(NEW) - t(1)) over two prompts
of the same length; TTFT = one new token after a 512-token prompt. Every call gets a prompt no
earlier call saw (OpenVINO GenAI caches prefixes): real text from the evaluation set, cut at
different offsets. Rows in other venvs run in a worker process each (this file with `--worker`),
timed inside the worker; all rows take turns in each round. Per row, where the time goes: for
onnxruntime rows the profiler's kernel time per step against the session run and our loop; for
GenAI rows its own perf metrics (time per output token, inference share of generate()).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT, NEW, LONG = 42, 128, 512


# ---- rows (each runs where its runtime is installed) ----------------------------------------

class OrtRow:
    """Our `ORTModelForCausalLM` on one provider with one variant (None: what the session selects)."""

    def __init__(self, folder: str, provider: str = "CPUExecutionProvider", variant: str | None = None, options: dict | None = None):
        import onnxruntime as ort
        from transformers import AutoConfig

        from optimum_onnx23.pipelines.modeling import ORTModelForCausalLM
        from optimum_onnx23.variants.runtime import create_session

        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        providers = [(provider, options)] if options else [provider]
        if provider != "CPUExecutionProvider":
            session_options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        path = Path(folder) / "model.onnx"
        self.session, self.variant = create_session(path, providers, session_options, variant=variant)
        self.in_runs = 0.0
        for method in ("run", "run_with_ort_values", "run_with_iobinding"):  # time inside onnxruntime
            setattr(self.session, method, self._timed(getattr(self.session, method)))
        self.model = ORTModelForCausalLM(self.session, AutoConfig.from_pretrained(folder), model_path=path)

    def _timed(self, run):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                self.in_runs += time.perf_counter() - start

        return timed

    def generate(self, prompt: list[int], new: int) -> dict:
        ids = np.asarray(prompt, np.int64)[None]
        self.in_runs = 0.0
        start = time.perf_counter()
        self.model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return {"s": time.perf_counter() - start, "runs_s": self.in_runs}


class GenaiRow:
    """OpenVINO GenAI's `LLMPipeline` on an optimum-intel export, fed token ids."""

    def __init__(self, folder: str, hint: str | None):
        import openvino as ov
        import openvino_genai as genai

        self.ov, self.genai = ov, genai
        properties = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
        self.pipe = genai.LLMPipeline(folder, "CPU", **properties)
        # what the hint resolves to on this CPU (the pipeline does not expose its compiled model)
        compiled = ov.Core().compile_model(str(Path(folder) / "openvino_model.xml"), "CPU", properties)
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        del compiled

    def generate(self, prompt: list[int], new: int) -> dict:
        ids = np.asarray(prompt, np.int64)[None]
        config = self.genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = new
        config.ignore_eos, config.do_sample = True, False
        inputs = self.genai.TokenizedInputs(self.ov.Tensor(ids), self.ov.Tensor(np.ones_like(ids)))
        start = time.perf_counter()
        result = self.pipe.generate(inputs, config)
        seconds = time.perf_counter() - start
        metrics = result.perf_metrics
        assert len(result.tokens[0]) == new, (len(result.tokens[0]), new)
        return {"s": seconds, "tpot_ms": metrics.get_tpot().mean, "ttft_ms": metrics.get_ttft().mean,
                "inference_ms": metrics.get_inference_duration().mean, "generate_ms": metrics.get_generate_duration().mean}


def worker(kind: str, specs: dict) -> None:
    """Serve rows over stdin/stdout, one JSON line each way: {"row", "prompt", "new"} -> result."""
    rows, info = {}, {}
    for name, spec in specs.items():
        try:
            if kind == "genai":
                rows[name] = GenaiRow(spec["folder"], spec.get("hint"))
                info[name] = {"precision": rows[name].precision}
            else:
                rows[name] = OrtRow(spec["folder"], spec["provider"], spec.get("variant"), spec.get("options"))
                info[name] = {"variant": rows[name].variant, "providers": rows[name].session.get_providers()}
        except Exception as error:  # one row failing to load is a row result, not the end of the run
            info[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(rows[request["row"]].generate(request["prompt"], request["new"])), flush=True)


class Remote:
    """A worker process in another venv; `row(name)` gives a handle with `generate`."""

    def __init__(self, python: Path, kind: str, specs: dict):
        self.process = subprocess.Popen(
            [str(python), __file__, "--worker", kind, json.dumps(specs)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, cwd=ROOT,
        )
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {kind} worker ({python}) exited before loading its rows")
        self.info = json.loads(line)

    def call(self, name: str, prompt: list[int], new: int) -> dict:
        self.process.stdin.write(json.dumps({"row": name, "prompt": prompt, "new": new}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


class RemoteRow:
    def __init__(self, remote: Remote, name: str):
        self.remote, self.name = remote, name

    def generate(self, prompt: list[int], new: int) -> dict:
        return self.remote.call(self.name, prompt, new)


# ---- preparation ------------------------------------------------------------------------------

def prepare_onnx(checkpoint: Path, work: Path) -> Path:
    """Our export of `checkpoint` with `ort-cpu-int4` and `int4` attached, and the forms for the
    OpenVINO provider where this package has them (`portable-opset21`), once per work folder."""
    import hashlib

    from optimum_onnx23 import export
    from optimum_onnx23.variants import attach_builtin_variants
    from optimum_onnx23.variants.producers import BUILTIN

    folder = work / "onnx"
    marker = folder / ".openvino-bench-done"
    source = ROOT / "optimum_onnx23"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(source.rglob("*.py")))).hexdigest()
    if not marker.is_file() or marker.read_text() != digest:
        shutil.rmtree(folder, ignore_errors=True)
        export(checkpoint, folder, atol=1e-3)
        attach_builtin_variants(folder, ["ort-cpu-int4", "int4", *(["portable-opset21"] if "portable-opset21" in BUILTIN else [])])
        marker.write_text(digest)
    return folder


def ovgenai_python() -> Path:
    """.venv-ovgenai's python, made by scripts/openvino_genai_env.sh on first use."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "openvino_genai_env.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def prepare_openvino(python: Path, checkpoint: Path, folder: Path, weight_format: str) -> Path:
    """optimum-intel's export of `checkpoint` (`--weight-format int4 --group-size 64`: SmolLM2's
    576 channels refuse the default 128; or fp32) into `folder`, unless it holds one already."""
    if (folder / "openvino_model.xml").is_file():
        return folder
    args = [str(Path(python).parent / "optimum-cli"), "export", "openvino", "-m", str(checkpoint), "--task",
            "text-generation-with-past", "--weight-format", weight_format]
    if weight_format == "int4":
        args += ["--group-size", "64"]
    subprocess.run([*args, str(folder)], check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return folder


def prompts(tokenizer, count: int) -> tuple[list[list[int]], list[list[int]]]:
    """`count` distinct PROMPT-token and LONG-token prompts of real text (the evaluation windows,
    cut at distinct offsets)."""
    from optimum_onnx23.variants.quality import EVAL_DIR

    ids = []
    for path in sorted(EVAL_DIR.glob("*.txt")):
        ids += tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    short = [ids[i * PROMPT : (i + 1) * PROMPT] for i in range(count)]
    step = max(1, (len(ids) - LONG) // count)
    long = [ids[i * step : i * step + LONG] for i in range(count)]
    assert len({tuple(p) for p in long}) == count and all(len(p) == LONG for p in long)
    return short, long


# ---- measurement ------------------------------------------------------------------------------

def measure(rows: dict, short: list[list[int]], long: list[list[int]], repeats: int) -> dict:
    """Best decode tok/s and TTFT per row over `repeats` interleaved rounds, each call on a fresh prompt."""
    out = {name: {"decode": 0.0, "ttft": float("inf"), "extra": {}, "rounds": []} for name in rows}
    for name, row in rows.items():  # warm-up: every row compiles / allocates before the rounds
        row.generate(short[0], 2)
        row.generate(long[0][: LONG // 2], 1)
    for round_ in range(repeats):
        for name, row in rows.items():
            first = row.generate(short[1 + 2 * round_], 1)
            full = row.generate(short[2 + 2 * round_], NEW)
            ttft = row.generate(long[1 + round_], 1)
            decode = (NEW - 1) / (full["s"] - first["s"])
            if decode > out[name]["decode"]:
                out[name]["decode"], out[name]["extra"] = decode, full
            out[name]["ttft"] = min(out[name]["ttft"], ttft["s"])
            out[name]["rounds"].append((decode, ttft["s"]))
            print(f"  round {round_ + 1} {name}: {decode:.1f} tok/s, TTFT {ttft['s']:.3f} s", file=sys.stderr, flush=True)
    return out


def profile_ours(folder: Path, variant: str, prompt: list[int]) -> str:
    """Where a decode step of our CPU row goes (benchmarks/int4_bench.py's profiler summary)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from int4_bench import profile_decode

    p = profile_decode(folder, variant, np.asarray(prompt, np.int64), steps=32)
    top = ", ".join(f"{op} {ms:.2f}" for op, ms, _ in p["ops"][:3])
    return (f"step {p['wall_ms']:.1f} ms: session run {p['run_ms']:.1f}, kernels {p['kernel_ms']:.1f} ({top}); "
            f"{p['wall_ms'] - p['run_ms']:.1f} ms in our loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPECS"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, default=None, help="HF folder (default: the real SmolLM2 of scripts/real_checkpoint.py)")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "optimum-onnx23-bench" / "openvino")
    parser.add_argument("--onnx", type=Path, default=None, help="our export with ort-cpu-int4 and int4 attached (default: made in --work)")
    parser.add_argument("--ov-int4", type=Path, default=None, help="optimum-intel int4 export (default: made in --work)")
    parser.add_argument("--ov-fp32", type=Path, default=None, help="optimum-intel fp32 export (default: made in --work)")
    parser.add_argument("--openvino-venv", type=Path, default=Path(os.environ.get("OPTIMUM_ONNX23_OPENVINO_VENV", ROOT / ".venv-openvino")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this text (e.g. 'ORT CPU')")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return

    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality_bench import real_checkpoint

    checkpoint = args.checkpoint or real_checkpoint()
    args.work.mkdir(parents=True, exist_ok=True)
    onnx = args.onnx or prepare_onnx(checkpoint, args.work)
    genai_python = ovgenai_python()
    ov_int4 = prepare_openvino(genai_python, checkpoint, args.ov_int4 or args.work / "ov-int4", "int4")
    ov_fp32 = prepare_openvino(genai_python, checkpoint, args.ov_fp32 or args.work / "ov-fp32", "fp32")
    short, long = prompts(AutoTokenizer.from_pretrained(checkpoint), 2 + 2 * args.repeats + 1)

    rows: dict = {}
    notes: dict[str, str] = {}
    wanted = lambda name: args.only is None or args.only in name
    for label, variant in (("ours ORT CPU fp32", "main"), ("ours ORT CPU int4 contrib (ort-cpu-int4)", "ort-cpu-int4"),
                           ("ours ORT CPU int4 standard (int4)", "int4")):
        if not wanted(label):
            continue
        rows[label] = OrtRow(str(onnx), variant=variant)
        notes[label] = "f32" if variant == "main" else "f32, int8 activations per block of 32 (accuracy level 4)"
    remotes = []
    ov_python = args.openvino_venv / "bin" / "python"
    options = {"device_type": "CPU", "precision": "FP32"}
    # fp32: our export without its int4 forms; int4: the file with them (the session picks the
    # variant for the provider, as every session does)
    ep_rows = {name: {"folder": folder, "provider": "OpenVINOExecutionProvider", "variant": None, "options": options}
               for name, folder in (("ours ORT OpenVINO EP fp32", None), ("ours ORT OpenVINO EP int4", str(onnx))) if wanted(name)}
    if ov_python.is_file() and ep_rows:
        if "ours ORT OpenVINO EP fp32" in ep_rows:
            ep_rows["ours ORT OpenVINO EP fp32"]["folder"] = str(_fp32_only(onnx, args.work))
        remote = Remote(ov_python, "ort", ep_rows)
        remotes.append(remote)
        for name, info in remote.info.items():
            if "error" in info:
                notes[name] = f"failed to load: {info['error']}"
                continue
            rows[name] = RemoteRow(remote, name)
            notes[name] = f"precision FP32 (provider option); variant {info['variant'] or 'main graph'}"
    elif not ov_python.is_file():
        for name in filter(wanted, ("ours ORT OpenVINO EP fp32", "ours ORT OpenVINO EP int4")):
            notes[name] = f"skipped: .venv-openvino absent ({args.openvino_venv}; bash scripts/openvino_env.sh makes it)"
    genai_specs = {f"OpenVINO GenAI {fmt} {hint or 'default'}": {"folder": str(folder), "hint": hint}
                   for fmt, folder in (("fp32", ov_fp32), ("int4", ov_int4)) for hint in ("f32", None)}
    genai_specs = {name: spec for name, spec in genai_specs.items() if wanted(name)}
    remote = Remote(genai_python, "genai", genai_specs) if genai_specs else None
    remotes += [remote] if remote else []
    for name, info in (remote.info if remote else {}).items():
        if "error" in info:
            notes[name] = f"failed to load: {info['error']}"
            continue
        rows[name] = RemoteRow(remote, name)
        hint = genai_specs[name]["hint"]
        notes[name] = f"INFERENCE_PRECISION_HINT {hint or 'default'}: {info['precision']}"

    try:
        results = measure(rows, short, long, args.repeats)
    finally:
        for remote in remotes:
            remote.close()
    base = results.get("ours ORT CPU int4 contrib (ort-cpu-int4)") or next(iter(results.values()))
    print(f"\nSmolLM2-135M-Instruct, CPU ({os.cpu_count()} cores), batch 1, {PROMPT}-token prompts, {NEW} new tokens, "
          f"512-token TTFT, best of {args.repeats} interleaved rounds, a new prompt for every call\n")
    # On a shared machine the best round of each row can fall in different quiet moments: the median
    # of the per-round ratios (rows of one round ran back to back) is the steadier comparison.
    print("| row | decode tok/s | x ort-cpu-int4 (best; median of rounds) | 512-token TTFT s | x ort-cpu-int4 (best; median) | precision |")
    print("|---|---|---|---|---|---|")
    for name in [*rows, *(n for n in notes if n not in rows)]:
        if name not in results:
            print(f"| {name} | - | - | - | - | {notes[name]} |")
            continue
        r = results[name]
        decode_ratio = np.median([a[0] / b[0] for a, b in zip(r["rounds"], base["rounds"])])
        ttft_ratio = np.median([a[1] / b[1] for a, b in zip(r["rounds"], base["rounds"])])
        print(f"| {name} | {r['decode']:.1f} | {r['decode'] / base['decode']:.2f}; {decode_ratio:.2f} | {r['ttft']:.3f} | "
              f"{r['ttft'] / base['ttft']:.2f}; {ttft_ratio:.2f} | {notes[name]} |")
    print("\nWhere the time goes:")
    for name, r in results.items():
        extra = r["extra"]
        if "tpot_ms" in extra:
            share = extra["inference_ms"] / extra["generate_ms"] if extra["generate_ms"] else float("nan")
            print(f"- {name}: GenAI perf metrics of the best {NEW}-token call: {extra['tpot_ms']:.2f} ms per output token, "
                  f"TTFT {extra['ttft_ms']:.0f} ms, model inference {share:.0%} of generate()")
        elif "runs_s" in extra:
            print(f"- {name}: best {NEW}-token call {1000 * extra['s'] / NEW:.2f} ms a token, of which onnxruntime's "
                  f"session runs {1000 * extra['runs_s'] / NEW:.2f} ms and our generate() loop the rest")
    if not args.no_profile:
        for name, variant in (("ours ORT CPU fp32", "main"), ("ours ORT CPU int4 contrib (ort-cpu-int4)", "ort-cpu-int4"),
                              ("ours ORT CPU int4 standard (int4)", "int4")):
            if name in results:
                print(f"- {name}: {profile_ours(onnx, variant, short[0])}")


def _fp32_only(onnx: Path, work: Path) -> Path:
    """A copy of our export without variants but the ones for the OpenVINO provider would see in
    fp32: the same folder stripped of the int4 forms (so the fp32 row runs fp32 weights)."""
    from optimum_onnx23.variants import list_variants
    from optimum_onnx23.variants.folder import load_model, strip_folder

    folder = work / "onnx-fp32"
    names = [v.name for v in list_variants(load_model(onnx / "model.onnx"))]
    quantized = [n for n in names if "int4" in n or "int8" in n]
    kept = sorted(n for n in names if n not in quantized)
    if not (folder / "model.onnx").is_file() or sorted(_names(folder)) != kept:  # a copy of an older folder
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(onnx, folder)
        if quantized:
            strip_folder(folder / "model.onnx", quantized)
    return folder


def _names(folder: Path) -> list[str]:
    from optimum_onnx23.variants import list_variants
    from optimum_onnx23.variants.folder import load_model

    return [v.name for v in list_variants(load_model(folder / "model.onnx"))]


if __name__ == "__main__":
    main()
