"""Greedy generation of a straight-to-int4 export (`--streamed --weight-format int4`) against
PyTorch on the same dequantized weights, for checkpoints too big to load (issue 27's 8 B case).

One after the other, never together:
1. PyTorch: the model on the meta device (`tracing.streamed`), its embedding and norms read from
   the checkpoint, the lm_head fake-quantized int8, every decoder layer's linears fake-quantized
   int4 and read layer by layer (`passes.weight_format.FakeQuantizer`: each layer quantized once,
   dequantized at every step); transformers' greedy `generate`. Then all of it is freed.
2. onnxruntime: `ORTModelForCausalLM.from_pretrained(export)` greedy `generate`, at
   `session.qdq_matmulnbits_accuracy_level` 0 (float32 on the dequantized weights: the graph the
   reference computes) and, with `--also-level4`, at our sessions' default 4 (int8 activations).

    python benchmarks/int4_generate_check.py CHECKPOINT EXPORT [--new-tokens 8] [--also-level4]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
from _common import peak_rss_mb


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)


def pytorch_greedy(folder: Path, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    from transformers import AutoConfig

    from optimum_onnx23.exporters.memory import free_pytorch_weights
    from optimum_onnx23.exporters.passes.weight_format import LM_HEAD_BITS, FakeQuantizer, fake_quantized
    from optimum_onnx23.exporters.tracing import streamed

    model = streamed.skeleton(folder, AutoConfig.from_pretrained(folder), torch.float32)
    weights = streamed.StreamedWeights(streamed.checkpoint_index(folder), model, torch.float32)
    layers = model.model.layers
    weights.materialize(model, skip=tuple(layers))
    head = model.get_output_embeddings()
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    weights.transform = FakeQuantizer({f"{name}.weight": 4 for name in linears})
    with torch.no_grad():
        head.weight = torch.nn.Parameter(fake_quantized(head.weight, LM_HEAD_BITS), requires_grad=False)
        with weights.layer_by_layer(layers):
            ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False)
    free_pytorch_weights(model)
    del model, weights, head
    gc.collect()
    return ids[0].tolist()


def onnxruntime_greedy(export: Path, prompt: torch.Tensor, new_tokens: int, level: int) -> list[int]:
    import onnxruntime as ort

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
    model = ORTModelForCausalLM.from_pretrained(export, session_options=options)
    ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False)
    del model
    gc.collect()
    return [int(i) for i in ids[0]]


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("export", type=Path)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--also-level4", action="store_true")
    args = parser.parse_args()
    prompt = AutoTokenizer.from_pretrained(args.checkpoint)("The capital of France is", return_tensors="pt").input_ids
    prompt %= json.loads((args.checkpoint / "config.json").read_text())["vocab_size"]  # a tiny test model's vocabulary
    rows = {}
    for label, run in [
        ("pytorch fake-quant", lambda: pytorch_greedy(args.checkpoint, prompt, args.new_tokens)),
        ("onnxruntime level 0", lambda: onnxruntime_greedy(args.export, prompt, args.new_tokens, 0)),
        *([("onnxruntime level 4", lambda: onnxruntime_greedy(args.export, prompt, args.new_tokens, 4))] if args.also_level4 else []),
    ]:
        _reset_peak()
        start = time.perf_counter()
        ids = run()
        rows[label] = {"ids": ids, "seconds": round(time.perf_counter() - start, 1), "peak_rss_gb": round(peak_rss_mb() / 1e3, 2)}
        print(label, json.dumps(rows[label]), flush=True)
    reference = rows["pytorch fake-quant"]["ids"]
    for label, row in rows.items():
        print(f"{label:<24} greedy == reference: {row['ids'] == reference}  ({row['seconds']} s, peak RSS {row['peak_rss_gb']} GB)")


if __name__ == "__main__":
    main()
