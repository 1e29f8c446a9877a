"""gpt-oss attention with sinks: the main graph (MatMul / Concat(sink) / Softmax / MatMul over the
repeat_kv copies) against the `ort-cpu-gqa` variant (com.microsoft::GroupQueryAttention with
`head_sink`), in the same run.

Model: a gpt-oss-shaped random model (hidden 512, 4 layers alternating sliding (128) / full, 8 heads
of 64 / 2 kv heads, 8 experts of intermediate 512, top-2, attention sinks, vocab 32000), fp32, CPU,
batch 1, driven through `ORTModelForCausalLM.generate()` on token ids. The variant folder is a copy
of the main export with the variant attached (the CPU session selects it).

    python benchmarks/gqa_sinks_bench.py [--work DIR] [--new-tokens 64] [--rounds 3]

Definitions (identical for both rows):
  decode tok/s @P = (N - 1) / (t(N forced new tokens) - t(1 new token)) after a P-token prompt, N=64
  TTFT 512       = t(1 new token) for a 512-token prompt
Each time is the best of 3 runs, and the two rows alternate for `--rounds` rounds (3), keeping each
row's best (the machine may be shared: load that drifts during the run hits both rows). Ratios: variant / main graph (TTFT:
main / variant, so > 1 is faster). Exports use `--logits last`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _common import best

SHAPE = dict(
    hidden_size=512, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
    num_local_experts=8, num_experts_per_tok=2, sliding_window=128,
    layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    vocab_size=32000, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3,
)
PROMPTS = (32, 1024)
LONG_PROMPT = 512


def prepare(work: Path) -> tuple[Path, Path]:
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    from optimum_onnx23.exporters import export
    from optimum_onnx23.variants import attach_builtin_variants

    source, main, variant = work / "model", work / "onnx", work / "onnx-ort-cpu-gqa"
    if not (source / "config.json").exists():
        torch.manual_seed(0)
        model = GptOssForCausalLM(GptOssConfig(**SHAPE)).eval()
        with torch.no_grad():  # sinks start at zero; give them values as a trained model has
            for name, p in model.named_parameters():
                if name.endswith("sinks"):
                    p.normal_(0.0, 1.0)
        model.generation_config.pad_token_id = 3
        model.save_pretrained(source)
    if not (main / "export_report.json").exists():
        export(source, main, logits="last", overwrite=True)
    if not (variant / "variant_report.json").exists():
        shutil.rmtree(variant, ignore_errors=True)
        shutil.copytree(main, variant)
        (variant / "variant_report.json").write_text(json.dumps(attach_builtin_variants(variant, ["ort-cpu-gqa"])))
    return main, variant


def measure(folder: Path, new: int) -> dict:
    import torch

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)

    def call(ids, max_new_tokens):
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=3)

    result = {"variant": model.variant}
    for prompt in PROMPTS:
        ids = torch.randint(4, SHAPE["vocab_size"], (1, prompt), generator=generator)
        call(ids, 4)  # warm-up
        t1 = best(lambda: call(ids, 1), 3)
        outputs = []
        tn = best(lambda: outputs.append(call(ids, new)), 3)
        result[f"decode_{prompt}"] = (new - 1) / (tn - t1)
        result[f"tokens_{prompt}"] = outputs[-1][0, -new:].tolist()
    long_ = torch.randint(4, SHAPE["vocab_size"], (1, LONG_PROMPT), generator=generator)
    result["ttft_512"] = best(lambda: call(long_, 1), 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/gqa_sinks_bench")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    main_dir, variant_dir = prepare(work)
    labels = {"main graph (MatMul/Softmax with the sink column)": main_dir, "ort-cpu-gqa (GroupQueryAttention + head_sink)": variant_dir}
    rows: dict[str, dict] = {}
    for _ in range(args.rounds):  # the rows alternate, so load that drifts during the run hits both; best of the rounds kept
        for label, folder in labels.items():
            r = measure(folder, args.new_tokens)
            best_so_far = rows.setdefault(label, r)
            for key in r:
                if key.startswith("decode_"):
                    best_so_far[key] = max(best_so_far[key], r[key])
                elif key == "ttft_512":
                    best_so_far[key] = min(best_so_far[key], r[key])
    base = next(iter(rows.values()))
    print(f"| row | selected | {' | '.join(f'decode tok/s @{p}' for p in PROMPTS)} | TTFT 512 s |")
    print("|---|---|" + "---|" * (len(PROMPTS) + 1))
    for label, r in rows.items():
        decode = " | ".join(f"{r[f'decode_{p}']:.1f} ({r[f'decode_{p}'] / base[f'decode_{p}']:.2f}x)" for p in PROMPTS)
        print(f"| {label} | {r['variant'] or 'main'} | {decode} | {r['ttft_512']:.3f} ({base['ttft_512'] / r['ttft_512']:.2f}x) |")
    variant = list(rows.values())[1]
    same = all(variant[f"tokens_{p}"] == base[f"tokens_{p}"] for p in PROMPTS)
    print(f"\nsame greedy tokens as the main graph: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
