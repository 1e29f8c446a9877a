"""Export benchmark: a random Llama through optimum-onnx23's dynamo exporter.

Prints one table: wall time and peak RSS of (a) our full export (trace, optimize, fuse, save,
validate against PyTorch, config/tokenizer) and (b) a bare `torch.onnx.export(dynamo=True)` of the
same model with torch's default optimization, as the baseline ratio; with `--attach`, then the
in-place `variants attach` of each named variant on our export (calibrated, as the CLI does: the
SmolLM2 tokenizer is copied in when cached). Each runs in a fresh subprocess so peak RSS is its
own. Targets: SmolLM shape (issue 2) under 90 s, peak RSS under 3x fp32 weights; 1 B / 3 B shapes
(issue 27) export <= 1.1x and int4 attach <= 1.2x the fp32 weights.

    python benchmarks/export_bench.py [--layers 30]
    python benchmarks/export_bench.py --shape llama-1b --dtype bfloat16 --skip-baseline --attach ort-cpu-int4 int4
    python benchmarks/export_bench.py --shape llama-1b --dtype bfloat16 --skip-baseline --streamed both
    python benchmarks/export_bench.py --checkpoint /work/int4direct-data/llama1b --skip-baseline --streamed yes --int4 --peers llama.cpp genai

Peers (`--peers`, issue 27), each in the same run on the same checkpoint: llama.cpp's
`convert_hf_to_gguf.py` (bf16 GGUF) then `llama-quantize` Q4_K_M (`LLAMA_CPP` names the llama.cpp
checkout with a built `build/bin/llama-quantize`), and onnxruntime-genai's builder
(`python -m onnxruntime_genai.models.builder -p int4 -e cpu`). `--int4` adds our straight-to-int4
row (`--streamed --weight-format int4`). A peer whose estimated peak (its ratio measured at 1 B,
`PEER_RATIOS`, times the fp32 weights) exceeds the memory available is not run: its row says so.
`--checkpoint` takes an existing bf16 safetensors folder (kept; benchmarks/big_checkpoint.py writes
the 1 B / 3 B / 8 B shapes tensor by tensor).

`llama-1b` is hidden 2048, 16 layers, MLP 8192, 32 heads / 8 kv heads, SmolLM2's 49152-token tied
vocabulary: 1.07 B parameters, 4.3 GB in fp32 (issue 27's case); `llama-3b` the Llama-3.2-3B body
(hidden 3072, 28 layers, MLP 8192, 24 / 8 heads) on the same vocabulary. Checkpoints are written
in `--dtype` (bf16 halves what the checkpoint costs to write and read); ratios are to fp32 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mb

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP", "/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp"))
# Peak RSS / fp32 weights measured here at 1.07 B (bf16 checkpoint): a peer is run at a bigger
# shape only when this ratio times its fp32 weights fits in the memory available.
PEER_RATIOS = {"onnxruntime-genai builder int4": 1.95, "llama.cpp convert bf16": 0.27, "llama-quantize Q4_K_M": 0.17}

SMOLLM_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0,
)


LLAMA_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
)
LLAMA_3B = {**LLAMA_1B, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24}
# Llama-3.2-3B's own shape (issue 27's 3 B case): its 128256-token tied vocabulary and head_dim 128;
# the SmolLM2 tokenizer copied in gives ids < 49152, enough for calibration text.
LLAMA_3_2_3B = {**LLAMA_3B, "vocab_size": 128256, "head_dim": 128, "max_position_embeddings": 8192}
SHAPES = {"smollm-135m": SMOLLM_135M, "llama-1b": LLAMA_1B, "llama-3b": LLAMA_3B, "llama-3.2-3b": LLAMA_3_2_3B}
TOKENIZER = Path.home() / ".cache/optimum-onnx23/smollm2-135m-instruct/hf"


def make_model(folder: Path, shape: dict, dtype: str = "float32") -> int:
    """Random checkpoint in `dtype`; returns its fp32 weight bytes."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, dtype))  # built in its dtype: no fp32 copy of a big model
    model = LlamaForCausalLM(LlamaConfig(**shape))
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # calibrated int4 needs a tokenizer
        if (TOKENIZER / name).is_file() and shape["vocab_size"] >= 49152:
            shutil.copy(TOKENIZER / name, folder / name)
    return sum(p.numel() * 4 for p in model.parameters())


def child(kind: str, model: str, out: str) -> None:
    start = time.perf_counter()
    if kind.startswith("exec "):  # a peer's command: its own peak RSS (ru_maxrss of the waited-for child, forked from this small process)
        import resource

        proc = subprocess.run(json.loads(kind[5:]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6
        print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak}))
        return
    if kind.startswith("optimum-onnx23"):
        from optimum_onnx23.exporters import export

        export(model, out, streamed="--streamed" in kind, weight_format="int4" if kind.endswith("int4") else "fp32")
    elif kind.startswith("attach:"):
        from optimum_onnx23.variants import attach_builtin_variants

        attach_builtin_variants(Path(out), [kind.split(":", 1)[1]])
    else:
        import torch
        from transformers import AutoModelForCausalLM

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from optimum_onnx23.exporters import get_export_config
        from optimum_onnx23.exporters.tracing.signature import build_signature

        m = AutoModelForCausalLM.from_pretrained(model).eval()
        signature = build_signature(get_export_config(m.config.model_type), m.config, with_past=True)
        program = torch.onnx.export(
            signature.wrapper(m), signature.sample_inputs(), dynamic_shapes=signature.dynamic_shapes(),
            input_names=signature.input_names, output_names=signature.output_names,
            opset_version=23, dynamo=True, verbose=False,
        )
        Path(out).mkdir()
        program.save(str(Path(out) / "model.onnx"), external_data=True)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}))


def run_child(kind: str, model: Path | str, out: Path) -> tuple[float, float, float]:
    """Wall time (process start included), in-process export time, and this child's own peak RSS (bytes)."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(model), str(out)], stdout=stdout, stderr=stderr)
        proc.wait()
        wall = time.perf_counter() - start
        stdout.seek(0), stderr.seek(0)
        if proc.returncode:
            sys.exit(f"{kind} export failed:\n{stderr.read()[-3000:]}")
        result = json.loads(stdout.read().strip().splitlines()[-1])
    return wall, result["seconds"], result["peak_rss_mb"] * 1e6


def peer_commands(checkpoint: Path, tmp: Path) -> list[tuple[str, list[str], Path]]:
    """(row label, command, output) of each peer step, in order."""
    gguf = tmp / "llamacpp-bf16.gguf"
    return [
        ("llama.cpp convert bf16", [sys.executable, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", "bf16", "--outfile", str(gguf)], gguf),
        ("llama-quantize Q4_K_M", [str(LLAMA_CPP / "build/bin/llama-quantize"), str(gguf), str(tmp / "llamacpp-q4km.gguf"), "Q4_K_M", str(os.cpu_count())], tmp / "llamacpp-q4km.gguf"),
        ("onnxruntime-genai builder int4", [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(tmp / "genai"),
                                            "-p", "int4", "-e", "cpu", "-c", str(tmp / "genai-cache")], tmp / "genai"),
    ]


def checkpoint_fp32_bytes(folder: Path) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from optimum_onnx23.exporters.tracing.streamed import checkpoint_index

    return checkpoint_index(folder).numel() * 4


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=SHAPES, default="smollm-135m")
    parser.add_argument("--layers", type=int, help="override the shape's layer count (smollm-135m default: 30)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="checkpoint dtype")
    parser.add_argument("--skip-baseline", action="store_true", help="no bare torch.onnx.export row (big shapes)")
    parser.add_argument("--attach", nargs="*", default=[], help="variants to attach to our export, one child each")
    parser.add_argument(
        "--streamed", choices=["no", "yes", "both", "skip"], default="no",
        help="our export in memory (no), with --streamed (yes), or both (attach then runs on the streamed one); skip: no fp32 export",
    )
    parser.add_argument("--checkpoint", type=Path, help="an existing bf16 safetensors folder instead of --shape's random one")
    parser.add_argument("--int4", action="store_true", help="also our straight-to-int4 export (--streamed --weight-format int4)")
    parser.add_argument("--peers", nargs="*", default=[], choices=["llama.cpp", "genai"], help="peers to run on the same checkpoint")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    shape = {**SHAPES[args.shape], **({"num_hidden_layers": args.layers} if args.layers else {})}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        if args.checkpoint:
            source, weight_bytes = args.checkpoint, checkpoint_fp32_bytes(args.checkpoint)
            shape = json.loads((source / "config.json").read_text())
            args.shape, args.dtype = source.name, shape.get("dtype") or shape.get("torch_dtype")
        else:
            source = tmp / "model"
            weight_bytes = make_model(source, shape, args.dtype)
        rows = []
        ours = {"no": ("optimum-onnx23",), "yes": ("optimum-onnx23 --streamed",), "both": ("optimum-onnx23", "optimum-onnx23 --streamed"), "skip": ()}
        kinds = (() if args.skip_baseline else ("torch.onnx.export",)) + ours[args.streamed]
        for kind in kinds:
            out = tmp / f"out-{kind.replace(' ', '')}"
            wall, inner, peak = run_child(kind, source, out)
            onnx_bytes = sum(f.stat().st_size for f in out.iterdir())
            rows.append((kind, wall, inner, peak, onnx_bytes))
        for variant in args.attach:  # each on the (last) export as it stands (attached ones stay)
            wall, inner, peak = run_child(f"attach:{variant}", "-", out)
            rows.append((f"attach {variant}", wall, inner, peak, (out / "model.onnx_data").stat().st_size))
        import shutil

        for path in tmp.glob("out-*"):  # disk: the fp32 exports are measured, the next rows need the room
            shutil.rmtree(path)
        if args.int4:
            kind = "optimum-onnx23 --streamed int4"
            out = tmp / "out-int4"
            wall, inner, peak = run_child(kind, source, out)
            rows.append(("ours --streamed --weight-format int4", wall, inner, peak, size_of(out)))
            shutil.rmtree(out)
        skipped = []
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from optimum_onnx23.exporters.memory import available_bytes

        for label, command, output in peer_commands(source, tmp):
            if ("genai" if "genai" in label else "llama.cpp") not in args.peers:
                continue
            estimate, available = PEER_RATIOS[label] * weight_bytes, available_bytes() or 0
            if estimate > 0.9 * available:
                skipped.append(f"{label}: not run, estimated peak {estimate / 1e9:.1f} GB ({PEER_RATIOS[label]}x fp32 weights, "
                               f"measured at 1.07 B) > 90% of {available / 1e9:.1f} GB available")
                continue
            wall, inner, peak = run_child("exec " + json.dumps(command), "-", "-")
            rows.append((label, wall, inner, peak, size_of(output)))
            if label.startswith("llama-quantize"):
                (tmp / "llamacpp-bf16.gguf").unlink(missing_ok=True)
            if output.exists() and not label.startswith("llama.cpp convert"):
                shutil.rmtree(output) if output.is_dir() else output.unlink()

    base = rows[0] if rows else ("-", 1.0, 1.0, 0, 0)
    print(f"\n{args.shape}-shaped Llama ({args.dtype} checkpoint), {shape['num_hidden_layers']} layers, fp32 weights "
          f"{weight_bytes / 1e6:.0f} MB, {os.cpu_count()} CPUs, torch {__import__('torch').__version__}")
    print(f"{'step':<38}{'wall s':>9}{'in-proc s':>11}{'peak RSS MB':>13}{'RSS/weights':>13}{'folder MB':>11}{'time vs base':>14}")
    for kind, wall, inner, peak, size in rows:
        print(f"{kind:<38}{wall:>9.1f}{inner:>11.1f}{peak / 1e6:>13.0f}{peak / weight_bytes:>13.2f}{size / 1e6:>11.0f}{wall / base[1]:>13.2f}x")
    for line in skipped:
        print(line)
    ours = next((r for r in rows if r[0].startswith(("optimum-onnx23", "ours"))), None)
    if ours is None:
        return
    if args.shape == "smollm-135m":
        print(f"targets: wall < 90 s -> {'OK' if ours[1] < 90 else 'MISSED'}; "
              f"peak RSS < 3x weights -> {'OK' if ours[3] < 3 * weight_bytes else 'MISSED'}")
    else:
        attached = [r for r in rows if r[0].startswith("attach")]
        best = min([r[3] for r in rows if r[0].startswith("optimum-onnx23")] or [ours[3]])
        print(f"targets: export <= 1.1x weights -> {'OK' if best <= 1.1 * weight_bytes else 'MISSED'}; "
              f"attach <= 1.2x -> {'OK' if all(r[3] <= 1.2 * weight_bytes for r in attached) else 'MISSED'}")


if __name__ == "__main__":
    main()
