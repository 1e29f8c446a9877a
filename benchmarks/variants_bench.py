"""Backend variants on the SmolLM-135M-shaped random Llama: decode speed, time to first token,
session creation with selection, file sizes and greedy agreement, main graph vs every variant.

    /work/venv/bin/python benchmarks/variants_bench.py [--new-tokens 128] [--prompt 128] [--workdir DIR]

CPU, batch 1, greedy, IO binding (the KV cache stays in onnxruntime's OrtValues between steps).
Every figure in the table is measured in this run; ratios are against the main graph of this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

SMOLLM = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-5,
    bos_token_id=1, eos_token_id=2,
)
VARIANTS = ["ort-cpu-int4", "ort-cpu-int8", "ort-cpu"]


def build_export(workdir: Path) -> Path:
    """Export the random SmolLM-shaped Llama once; later runs reuse it."""
    exported = workdir / "smollm-random-onnx"
    if (exported / "export_report.json").exists():
        return exported
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from optimum_onnx23.exporters import export

    source = workdir / "smollm-random"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM)).eval()
    model.save_pretrained(source)
    start = time.perf_counter()
    export(source, exported, overwrite=True)
    print(f"exported in {time.perf_counter() - start:.0f} s")
    return exported


class Generator:
    """Greedy decoding with IO binding on one session."""

    def __init__(self, session, num_layers: int, kv_heads: int, head_dim: int):
        import onnxruntime as ort

        self.ort = ort
        self.session = session
        self.layers = num_layers
        self.empty = np.zeros((1, kv_heads, 0, head_dim), np.float32)
        self.inputs = {i.name for i in session.get_inputs()}

    def _step(self, binding, ids: np.ndarray, past_len: int, past):
        total = past_len + ids.shape[1]
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        if "position_ids" in self.inputs:
            binding.bind_cpu_input("position_ids", np.arange(past_len, total, dtype=np.int64)[None])
        for i in range(self.layers):
            for kind in ("key", "value"):
                name = f"past_key_values.{i}.{kind}"
                if past is None:
                    binding.bind_cpu_input(name, self.empty)
                else:
                    binding.bind_ortvalue_input(name, past[f"present.{i}.{kind}"])
        for out in self.output_names:
            binding.bind_output(out, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = dict(zip(self.output_names, binding.get_outputs()))
        logits = outputs["logits"].numpy()
        return int(logits[0, -1].argmax()), outputs

    @property
    def output_names(self):
        return [o.name for o in self.session.get_outputs()]

    def generate(self, prompt: np.ndarray, new_tokens: int):
        binding = self.session.io_binding()
        start = time.perf_counter()
        token, past = self._step(binding, prompt, 0, None)
        ttft = time.perf_counter() - start
        tokens = [token]
        past_len = prompt.shape[1]
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            binding = self.session.io_binding()
            token, past = self._step(binding, np.array([[token]], np.int64), past_len, past)
            past_len += 1
            tokens.append(token)
        decode = time.perf_counter() - start
        return tokens, ttft, (new_tokens - 1) / decode

    def teacher_forced_argmax(self, ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
        for i in range(self.layers):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = self.empty
        return self.session.run(["logits"], feeds)[0][0].argmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "optimum_onnx23_variants_bench")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved generations per model; the best is reported")
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    args = parser.parse_args()

    import onnxruntime as ort

    from optimum_onnx23.variants import attach_builtin_variants, select_for_providers
    from optimum_onnx23.variants.runtime import cache_dir

    ort.set_default_logger_severity(3)  # the main-graph session logs each variant-owned initializer it drops
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ["OPTIMUM_ONNX23_CACHE"] = str(args.workdir / "selection-cache")  # timed from empty below
    exported = build_export(args.workdir)
    folder = args.workdir / "with-variants"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(exported, folder)
    onnx_path = folder / "model.onnx"
    base_sizes = {p.name: p.stat().st_size for p in folder.glob("model.onnx*")}

    start = time.perf_counter()
    report = attach_builtin_variants(folder, args.variants)
    attach_s = time.perf_counter() - start

    cfg = SMOLLM
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, cfg["vocab_size"], size=(1, args.prompt), dtype=np.int64)
    providers = ["CPUExecutionProvider"]

    def timed_session(selected):
        start = time.perf_counter()
        session = selected.session(providers)
        return session, time.perf_counter() - start

    # Session creation: the exported file without variants is the baseline of "selection adds".
    _, plain_session_s = timed_session(select_for_providers(exported / "model.onnx", providers)[0])
    models = {}
    for name in ["main", *args.variants]:
        shutil.rmtree(cache_dir(), ignore_errors=True)
        start = time.perf_counter()
        selected, chosen = select_for_providers(onnx_path, providers, variant=name)
        select_s = time.perf_counter() - start
        start = time.perf_counter()
        select_for_providers(onnx_path, providers, variant=name)
        cached_select_s = time.perf_counter() - start
        session, create_s = timed_session(selected)
        generator = Generator(session, cfg["num_hidden_layers"], cfg["num_key_value_heads"], head_dim)
        generator.generate(prompt[:, :8], 4)  # warm-up
        models[name] = dict(generator=generator, chosen=chosen, select_s=select_s, cached_s=cached_select_s, session_s=create_s,
                            tps=0.0, ttft=float("inf"), tokens=None)
    # Interleaved repeats: every model sees the same background load (this machine is shared).
    for _ in range(args.repeats):
        for name, entry in models.items():
            tokens, ttft, tps = entry["generator"].generate(prompt, args.new_tokens)
            entry["tps"], entry["ttft"] = max(entry["tps"], tps), min(entry["ttft"], ttft)
            entry["tokens"] = tokens
    main = models["main"]
    sequence = np.concatenate([prompt, np.array([main["tokens"]], np.int64)], axis=1)[:, :-1]
    main_argmax = main["generator"].teacher_forced_argmax(sequence)[args.prompt - 1:]
    rows = []
    for name, entry in models.items():
        argmax = entry["generator"].teacher_forced_argmax(sequence)[args.prompt - 1:]
        same = np.array(entry["tokens"]) == np.array(main["tokens"])
        rows.append({
            "model": name if entry["chosen"] or name == "main" else f"{name} (fell back)",
            "decode_tok_s": entry["tps"], "decode_x": entry["tps"] / main["tps"], "ttft_s": entry["ttft"], "ttft_x": main["ttft"] / entry["ttft"],
            "select_s": entry["select_s"] if name != "main" else 0.0, "select_cached_s": entry["cached_s"] if name != "main" else 0.0,
            "session_s": entry["session_s"],
            "prefix": int(np.argmin(same)) if not same.all() else len(same),
            "argmax_equal": float(np.mean(argmax == main_argmax)),
            "added_bytes": 0 if name == "main" else report["variants"][name]["data_bytes_added"] + report["variants"][name]["graph_bytes_added"],
        })

    total_base = sum(base_sizes.values())
    print(f"\nSmolLM-135M-shaped random Llama, CPU ({os.cpu_count()} cores, shared with other jobs), batch 1, "
          f"prompt {args.prompt}, {args.new_tokens} new tokens, greedy, best of {args.repeats} interleaved; "
          f"main graph files {total_base / 1e6:.1f} MB; attaching {', '.join(args.variants)} took {attach_s:.1f} s\n")
    header = ("model", "decode tok/s", "x main", "TTFT s", "x main", "select s", "cached s", "session s",
              "greedy prefix = main", "teacher-forced = main", "added MB", "added %")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['model']} | {r['decode_tok_s']:.1f} | {r['decode_x']:.2f} | {r['ttft_s']:.3f} | {r['ttft_x']:.2f} | "
              f"{r['select_s']:.3f} | {r['select_cached_s']:.3f} | {r['session_s']:.2f} | {r['prefix']}/{args.new_tokens} | "
              f"{r['argmax_equal']:.0%} | {r['added_bytes'] / 1e6:.2f} | {100 * r['added_bytes'] / total_base:.2f} |")
    print(f"\nsession creation on the exported file without variants: {plain_session_s:.2f} s "
          "(select s + session s of a variant row is what selection costs against it)")
    print("greedy prefix: tokens generated before the first difference; teacher-forced: share of positions where the "
          "variant's argmax equals the main graph's on the main graph's own sequence")
    print("\nattach report:", json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "ops"} for k, v in report["variants"].items()}))


if __name__ == "__main__":
    main()
