"""Does each of our fusion rules pay? Per family, the fused graph against the same graph fused
without one rule (and against no fusion at all): one-token decode on a 256-token past and a
128-token prefill, batch 1, onnxruntime CPU.

    .venv/bin/python benchmarks/fusion_rules_bench.py [--families glm,bloom] [--rounds 15] [--workdir DIR]

Models: random weights, 6 layers, hidden 512, 8 query heads of 64 (2 kv heads where the family has
grouped kv heads), vocabulary 4096, so the layers and not the lm_head dominate. Each family is
exported once without fusions; the variants are that graph fused with a rule left out, which also
leaves out what depends on it (the 3-D Attention rule needs whole-head RotaryEmbedding inputs).
Every time is the best of `--rounds` interleaved rounds measured in this run; ratios are against
the fully fused graph of the same run (> 1: the variant is slower, so the rule pays).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np

MEDIUM = dict(
    hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
    vocab_size=4096, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=3,
)
GPT_MEDIUM = dict(n_embd=512, n_layer=6, n_head=8, n_positions=1024, vocab_size=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3)
# family -> (config, the rules of ours it exercises)
FAMILIES = {
    "glm": (dict(MEDIUM), ["InterleavedRotaryEmbedding", "PartialRotaryEmbedding"]),
    "phi": (dict(MEDIUM, num_key_value_heads=8), ["PartialRotaryEmbedding"]),
    "gptj": (dict(GPT_MEDIUM, rotary_dim=32), ["InterleavedRotaryEmbedding", "PartialRotaryEmbedding"]),
    "cohere": (dict(MEDIUM, use_qk_norm=True), ["CenteredRmsNormalization", "InterleavedRotaryEmbedding"]),
    "gemma4_text": (
        dict(MEDIUM, global_head_dim=64, layer_types=["sliding_attention"] * 5 + ["full_attention"], hidden_size_per_layer_input=64,
             vocab_size_per_layer_input=4096, sliding_window=512),
        ["PowRmsNormalization", "RotaryEmbeddingBSHD"],
    ),
    "bloom": (dict(hidden_size=512, n_layer=6, n_head=8, vocab_size=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3), ["AlibiAttention"]),
    "falcon": (
        dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, vocab_size=4096, ffn_hidden_size=1376, multi_query=True,
             parallel_attn=True, new_decoder_architecture=False, alibi=False, bos_token_id=1, eos_token_id=2, pad_token_id=3),
        ["EagerAttention"],
    ),
}
PAST, PREFILL = 256, 128


def export_unfused(family: str, config: dict, workdir: Path) -> Path:
    out = workdir / f"{family}-unfused"
    if (out / "export_report.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from optimum_onnx23.exporters import export

    source = workdir / f"{family}-random"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **config)).eval()
    with torch.no_grad():
        for p in model.parameters():  # trained-like norm weights: not all ones (see tests/tiny_models.py)
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(source)
    export(source, out, fusions_enabled=False, overwrite=True)
    return out


@contextlib.contextmanager
def _steps_without(names: set[str] | None):
    from optimum_onnx23 import fusions

    saved = fusions.FUSION_STEPS
    if names is not None:
        fusions.FUSION_STEPS = tuple(step for step in saved if step[1] not in names)
    try:
        yield
    finally:
        fusions.FUSION_STEPS = saved


def fused_variant(unfused: Path, out: Path, without: set[str] | None) -> tuple[Path, dict]:
    """`unfused` fused with every step but those named in `without` (None: all; {"*"}: none)."""
    import onnx_ir as ir

    from optimum_onnx23 import fusions

    model = ir.load(unfused / "model.onnx")
    counts = fusions.count_ops(model)
    if without != {"*"}:
        with _steps_without(without):
            counts = fusions.fuse(model).op_counts
    out.mkdir(parents=True, exist_ok=True)
    ir.save(model, out / "model.onnx", external_data="model.onnx_data")
    return out / "model.onnx", {k: v for k, v in counts.items() if v}


def _feeds(session, length: int, past: int):
    feeds = {"input_ids": np.full((1, length), 5, np.int64), "attention_mask": np.ones((1, past + length), np.int64),
             "position_ids": np.arange(past, past + length)[None]}
    rng = np.random.default_rng(0)
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = rng.standard_normal((1, i.shape[1], past, i.shape[3])).astype(np.float32)
    return {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=Path("build/fusion-bench"))
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, {args.rounds} rounds, decode past={PAST}, prefill={PREFILL}")
    print("| family | variant | standard ops | decode ms | ratio | prefill ms | ratio |\n|---|---|---|---|---|---|---|")
    for family in args.families.split(","):
        config, rules = FAMILIES[family]
        unfused = export_unfused(family, config, args.workdir)
        variants = {"all fusions": None, **{f"without {rule}": {rule} for rule in rules}, "no fusions": {"*"}}
        sessions, ops = {}, {}
        for label, without in variants.items():
            path, ops[label] = fused_variant(unfused, args.workdir / family / label.replace(" ", "_"), without)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 2
            sessions[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {label: (_feeds(s, 1, PAST), _feeds(s, PREFILL, 0)) for label, s in sessions.items()}
        best = {label: [float("inf"), float("inf")] for label in sessions}
        for _ in range(args.rounds):
            for label, session in sessions.items():  # interleaved: load changes hit every variant alike
                for k, feed in enumerate(feeds[label]):
                    start = time.perf_counter()
                    session.run(None, feed)
                    best[label][k] = min(best[label][k], time.perf_counter() - start)
        base = best["all fusions"]
        for label in sessions:
            shown = ", ".join(f"{op} {n}" for op, n in ops[label].items() if op in ("Attention", "RMSNormalization", "LayerNormalization", "RotaryEmbedding"))
            d, p = best[label]
            print(f"| {family} | {label} | {shown} | {d * 1e3:.3f} | {d / base[0]:.2f} | {p * 1e3:.2f} | {p / base[1]:.2f} |")


if __name__ == "__main__":
    main()
