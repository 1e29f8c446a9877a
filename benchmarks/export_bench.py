"""Export benchmark: a SmolLM-135M-shaped random Llama through optimum-onnx23's dynamo exporter.

Prints one table: wall time and peak RSS of (a) our full export (trace, optimize, fuse, save,
validate against PyTorch, config/tokenizer) and (b) a bare `torch.onnx.export(dynamo=True)` of the
same model with torch's default optimization, as the baseline ratio. Each runs in a fresh
subprocess so peak RSS is its own. Targets (issue 2): under 90 s, peak RSS under 3x fp32 weights.

    python benchmarks/export_bench.py [--layers 30]
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

SMOLLM_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0,
)


def make_model(folder: Path, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**SMOLLM_135M, "num_hidden_layers": layers}))
    model.save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def child(kind: str, model: str, out: str) -> None:
    start = time.perf_counter()
    if kind == "optimum-onnx23":
        from optimum_onnx23.exporters import export

        export(model, out)
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


def run_child(kind: str, model: Path, out: Path) -> tuple[float, float, float]:
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weight_bytes = make_model(tmp / "model", args.layers)
        rows = []
        for kind in ("torch.onnx.export", "optimum-onnx23"):
            wall, inner, peak = run_child(kind, tmp / "model", tmp / f"out-{kind}")
            onnx_bytes = sum(f.stat().st_size for f in (tmp / f"out-{kind}").iterdir())
            rows.append((kind, wall, inner, peak, onnx_bytes))

    base = rows[0]
    print(f"\nSmolLM-135M-shaped Llama, {args.layers} layers, fp32 weights {weight_bytes / 1e6:.0f} MB, "
          f"{os.cpu_count()} CPUs, torch {__import__('torch').__version__}")
    print(f"{'exporter':<22}{'wall s':>9}{'in-proc s':>11}{'peak RSS MB':>13}{'RSS/weights':>13}{'folder MB':>11}{'time vs base':>14}")
    for kind, wall, inner, peak, size in rows:
        print(f"{kind:<22}{wall:>9.1f}{inner:>11.1f}{peak / 1e6:>13.0f}{peak / weight_bytes:>13.2f}{size / 1e6:>11.0f}{wall / base[1]:>13.2f}x")
    ours = rows[1]
    print(f"targets: wall < 90 s -> {'OK' if ours[1] < 90 else 'MISSED'}; "
          f"peak RSS < 3x weights -> {'OK' if ours[3] < 3 * weight_bytes else 'MISSED'}")


if __name__ == "__main__":
    main()
