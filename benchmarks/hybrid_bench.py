"""Hybrid decoders (conv / state-space / linear-attention caches): speed of the exported graph against
PyTorch eager in the same run, and the two formulation choices of exporters/tracing/recurrences.py.

    python benchmarks/hybrid_bench.py [--work DIR] [--repeat 3] [--tables 1,2,3]

Tables (each time is the best of `--repeat` runs, backends interleaved; the machine may be shared,
so read the ratios):

1. LFM2-shaped random model (hidden 512, 12 layers: 8 short-conv + 4 attention, 8 heads / 4 kv heads,
   vocab 65536, fp32, CPU, batch 1), exported with default flags:
   decode tok/s = (N - 1) / (t(N forced new tokens) - t(1 new token)), prompt 32, N = 64;
   TTFT 512 = t(1 new token) for a 512-token prompt.
2. Decode ms/token at 128 and 1,500 positions of context (a prefill of that length, then 32 steps)
   for the same model (the conv states are fixed-size, only the 4 attention layers' share grows
   with the context) and for a 12-layer Mamba-2 (hidden 512, 16 heads x 64, state 64): states only.
   (An all-conv LFM2 has no cache in transformers: its mask code asks an attention layer for the
   sequence length.)
3. Kernels, one layer's recurrence exported alone (ONNX, onnxruntime, 2 threads):
   Mamba-2 SSD scan (48 heads x 64, state 128, chunk 256) at 1 and 512 tokens: transformers'
   fixed 256-token chunks (a one-token step padded to a chunk) / our chunk = min(S, 256) / the
   one-token recurrent update (`selective_state_update`, what a second, decode-only branch would run);
   Gated DeltaNet (16 heads, 128 x 128, chunk 64) at 1 and 512 tokens: chunks in a Scan (ours) /
   a Scan over tokens (transformers' recurrent form); both with the opset-27 form beside them
   (one `LinearAttention`, update_rule `gated` / `gated_delta`).
4. `--opset 27` against the default (opset 23: chunked SSD / Concat+Conv+Slice) export and PyTorch
   eager, same run, on the models of tables 1-2: decode ms/token (32 steps after a 128-token
   prefill) and TTFT 512 (one 512-token prefill step), batch 1, fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import best

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "optimum_onnx23" / "data" / "tiny-llama"
LFM2_TYPES = ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "full_attention", "conv"]
LFM2_SHAPE = dict(
    hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4, vocab_size=65536,
    max_position_embeddings=4096, block_auto_adjust_ff_dim=False, conv_L_cache=3, bos_token_id=1, eos_token_id=2, pad_token_id=3,
)


def build(folder: Path, model_type: str, **config) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).eval()
    model.generation_config.pad_token_id = 3
    model.save_pretrained(folder)
    return folder


def export(source: Path, out: Path, opset: int = 23) -> Path:
    from optimum_onnx23 import export as export_onnx

    if not (out / "model.onnx").exists():
        start = time.perf_counter()
        export_onnx(source, out, overwrite=True, opset=opset)
        print(f"  exported {source.name} in {time.perf_counter() - start:.0f} s")
    return out


# ---- 1 and 2: the model ------------------------------------------------------------------------------
def model_tables(work: Path, repeat: int, tables: set[str], only: str = "") -> None:
    models = {
        "lfm2 (8 conv + 4 attn)": build(work / "lfm2", "lfm2", num_hidden_layers=12, layer_types=LFM2_TYPES, **LFM2_SHAPE),
        "mamba2 (12 layers)": build(
            work / "mamba2", "mamba2", num_hidden_layers=12, hidden_size=512, num_heads=16, head_dim=64, expand=2,
            state_size=64, n_groups=1, chunk_size=256, vocab_size=65536, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        ),
    }
    rng = np.random.default_rng(0)
    if "1" in tables:
        decode_and_ttft(work, models, rng, repeat)
    if "2" in tables:
        context_growth(work, {k: v for k, v in models.items() if only in k}, rng, repeat)
    if "4" in tables:
        opset27_table(work, {k: v for k, v in models.items() if only in k}, rng, repeat)


def opset27_table(work, models, rng, repeat) -> None:
    from transformers import AutoModelForCausalLM

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    print("\n## 4. --opset 27 (LinearAttention / CausalConvWithState) vs the default export vs PyTorch eager\n")
    print("| model | backend | decode ms/token (ctx 128) | vs opset 23 | TTFT 512 (ms) | vs opset 23 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, source in models.items():
        backends = {
            "opset 23 (default)": ORTModelForCausalLM.from_pretrained(export(source, work / f"{source.name}-onnx")),
            "opset 27": ORTModelForCausalLM.from_pretrained(export(source, work / f"{source.name}-onnx27", opset=27)),
        }
        torch_model = AutoModelForCausalLM.from_pretrained(source).eval()
        prompt, long = rng.integers(4, 65536, (1, 128)), rng.integers(4, 65536, (1, 512))

        def ours(model):
            def decode():
                state = model.new_state(1)
                state.step(prompt)
                start = time.perf_counter()
                for _ in range(32):
                    state.step(np.array([[5]], np.int64))
                return (time.perf_counter() - start) / 32

            def ttft():
                state = model.new_state(1)
                start = time.perf_counter()
                state.step(long)
                return time.perf_counter() - start

            return decode, ttft

        def pytorch():
            def decode():
                with torch.no_grad():
                    out = torch_model(torch.from_numpy(prompt), use_cache=True)
                    cache, ids = out.cache, torch.tensor([[5]])
                    start = time.perf_counter()
                    for step in range(32):
                        mask = torch.ones(1, 129 + step, dtype=torch.long)
                        cache = torch_model(ids, cache=cache, use_cache=True, attention_mask=mask).cache
                    return (time.perf_counter() - start) / 32

            def ttft():
                with torch.no_grad():
                    start = time.perf_counter()
                    torch_model(torch.from_numpy(long), use_cache=True)
                    return time.perf_counter() - start

            return decode, ttft

        runs = {name: ours(model) for name, model in backends.items()}
        runs["PyTorch eager"] = pytorch()
        results = {name: [float("inf"), float("inf")] for name in runs}
        for _ in range(repeat):  # interleaved: a burst of load hits every backend alike
            for name, (decode, ttft) in runs.items():
                results[name][0] = min(results[name][0], decode())
                results[name][1] = min(results[name][1], ttft())
        base = results["opset 23 (default)"]
        for name, (decode, ttft) in results.items():
            print(f"| {label} | {name} | {decode * 1e3:.2f} | {base[0] / decode:.2f}x | {ttft * 1e3:.0f} | {base[1] / ttft:.2f}x |")


def decode_and_ttft(work, models, rng, repeat) -> None:
    from transformers import AutoModelForCausalLM

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    print("\n## 1. LFM2-shaped model: decode and TTFT, ours vs PyTorch eager (batch 1, fp32)\n")
    print("| backend | decode tok/s | TTFT 512 (ms) |")
    print("| --- | --- | --- |")
    source = models["lfm2 (8 conv + 4 attn)"]
    ours = ORTModelForCausalLM.from_pretrained(export(source, work / "lfm2-onnx"))
    torch_model = AutoModelForCausalLM.from_pretrained(source).eval()
    short = torch.from_numpy(rng.integers(4, 65536, (1, 32)))
    long = torch.from_numpy(rng.integers(4, 65536, (1, 512)))
    forced = dict(do_sample=False, pad_token_id=3)  # min_new_tokens = max_new_tokens: no early EOS
    results = {}
    for name, model in (("PyTorch eager", torch_model), ("optimum-onnx23", ours)):
        with torch.no_grad():
            t1 = best(lambda: model.generate(short, max_new_tokens=1, min_new_tokens=1, **forced), repeat)
            tn = best(lambda: model.generate(short, max_new_tokens=64, min_new_tokens=64, **forced), repeat)
            ttft = best(lambda: model.generate(long, max_new_tokens=1, min_new_tokens=1, **forced), repeat)
        results[name] = (63 / (tn - t1), ttft * 1e3)
    base = results["PyTorch eager"]
    for name, (tps, ttft) in results.items():
        print(f"| {name} | {tps:.1f} ({tps / base[0]:.2f}x) | {ttft:.0f} ({ttft / base[1]:.2f}x) |")



def context_growth(work, models, rng, repeat) -> None:
    from transformers import AutoModelForCausalLM

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    print("\n## 2. Decode ms/token vs context length (32 steps after a prefill of the context)\n")
    print("| model | backend | ctx 128 | ctx 1500 | 1500 / 128 |")
    print("| --- | --- | --- | --- | --- |")
    for label, source in models.items():
        onnx_dir = export(source, work / f"{source.name}-onnx")
        ours = ORTModelForCausalLM.from_pretrained(onnx_dir)
        torch_model = AutoModelForCausalLM.from_pretrained(source).eval()
        row = {"ours": [], "PyTorch": []}
        for context in (128, 1500):
            prompt = rng.integers(4, 65536, (1, context))

            def ours_steps():
                state = ours.new_state(1)
                state.step(prompt)
                start = time.perf_counter()
                for _ in range(32):
                    state.step(np.array([[5]], np.int64))
                return (time.perf_counter() - start) / 32

            def torch_steps():
                with torch.no_grad():
                    out = torch_model(torch.from_numpy(prompt), use_cache=True)
                    cache = out.cache
                    ids = torch.tensor([[5]])
                    mask = torch.ones(1, context + 1, dtype=torch.long)
                    start = time.perf_counter()
                    for step in range(32):
                        out = torch_model(ids, cache=cache, use_cache=True, attention_mask=mask)
                        cache = out.cache
                        mask = torch.ones(1, context + step + 2, dtype=torch.long)
                    return (time.perf_counter() - start) / 32

            row["ours"].append(min(ours_steps() for _ in range(repeat)) * 1e3)
            row["PyTorch"].append(min(torch_steps() for _ in range(repeat)) * 1e3)
        for backend, (a, b) in row.items():
            print(f"| {label} | {backend} | {a:.2f} | {b:.2f} | {b / a:.2f} |")


# ---- 3: the kernels --------------------------------------------------------------------------------------
def _onnx_session(module, args, dynamic_shapes, path: Path, opset: int = 23):
    import onnxruntime as ort

    from optimum_onnx23.exporters.tracing.standard_ops import TRANSLATIONS, adopt_pending_ops

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=min(opset, 25), verbose=False,
            custom_translation_table=TRANSLATIONS,
        )
    if opset > 25:
        program.model.opset_imports[""] = opset
        adopt_pending_ops(program.model)
    program.save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def kernel_tables(work: Path, repeat: int) -> None:
    from torch.export import Dim
    from transformers.models.mamba2 import modeling_mamba2
    from transformers.models.qwen3_5 import modeling_qwen3_5

    from optimum_onnx23.exporters.tracing import recurrences

    batch, seq = Dim("batch"), Dim("seq")
    print("\n## 3a. Mamba-2 SSD scan, one layer (48 heads x 64, state 128, 1 group): ms per call\n")
    heads, head_dim, state, chunk = 48, 64, 128, 256

    class Scan(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn
            self.A = torch.nn.Parameter(-torch.rand(heads))
            self.D = torch.nn.Parameter(torch.rand(heads))
            self.dt_bias = torch.nn.Parameter(torch.rand(heads))

        def forward(self, x, dt, B, C, ssm):
            return self.fn(x, dt, self.A, B, C, chunk, D=self.D, dt_bias=self.dt_bias, initial_states=ssm, dt_softplus=True, return_final_states=True)

    class Step(Scan):  # transformers' one-token update, as a decode-only branch would run it
        def forward(self, x, dt, B, C, ssm):
            state = ssm.clone()
            y = modeling_mamba2.mamba2_selective_state_update(
                state, x[:, 0], dt[:, 0, :, None].expand(-1, -1, head_dim), self.A[:, None, None].expand(-1, head_dim, state_size),
                B[:, 0], C[:, 0], self.D[:, None].expand(-1, head_dim), dt_bias=self.dt_bias[:, None].expand(-1, head_dim), dt_softplus=True,
            )
            return y, state

    state_size = state

    def inputs(length):
        return (torch.randn(1, length, heads, head_dim), torch.randn(1, length, heads), torch.randn(1, length, 1, state), torch.randn(1, length, 1, state), torch.randn(1, heads, head_dim, state) * 0.1)

    def fixed_chunk(*args, **kwargs):  # transformers' algorithm with its fixed chunk, made traceable
        return recurrences.mamba2_chunk_scan(*args, **kwargs)

    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        shapes = ({0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch})
        sessions["ours: chunk = min(S, 256)"] = _onnx_session(Scan(recurrences.mamba2_chunk_scan), inputs(5), shapes, Path(tmp) / "a.onnx")
        original = recurrences._chunks
        recurrences._chunks = lambda length, size: (size, (length + size - 1) // size, (length + size - 1) // size * size - length)
        try:
            sessions["fixed 256-token chunks"] = _onnx_session(Scan(fixed_chunk), inputs(5), shapes, Path(tmp) / "b.onnx")
        finally:
            recurrences._chunks = original
        sessions["opset 27: LinearAttention (gated)"] = _onnx_session(
            Scan(recurrences.mamba2_linear_attention), inputs(5), shapes, Path(tmp) / "a27.onnx", opset=27
        )
        step = _onnx_session(Step(None), inputs(1), None, Path(tmp) / "c.onnx")
        print("| form | S = 1 | S = 512 |")
        print("| --- | --- | --- |")
        times = {}
        for label, session in sessions.items():
            feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs(1))}
            one = best(lambda: session.run(None, feeds), repeat * 5)
            feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs(512))}
            long = best(lambda: session.run(None, feeds), repeat)
            times[label] = (one, long)
        feeds = {i.name: t.numpy() for i, t in zip(step.get_inputs(), inputs(1))}
        times["recurrent one-token update"] = (best(lambda: step.run(None, feeds), repeat * 5), float("nan"))
        for label, (one, long) in times.items():
            print(f"| {label} | {one * 1e3:.3f} | {long * 1e3:.1f} |")

        print("\n## 3b. Gated DeltaNet, one layer (16 heads, 128 x 128): ms per call\n")
        k_heads = v_heads = 16
        dim = 128

        class GDN(torch.nn.Module):
            def __init__(self, fn):
                super().__init__()
                self.fn = fn

            def forward(self, q, k, v, g, beta, s):
                return self.fn(q, k, v, g=g, beta=beta, initial_state=s, output_final_state=True, use_qk_l2norm_in_kernel=True)

        def token_scan(query, key, value, g, beta, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
            from torch._higher_order_ops.scan import scan

            query, key = recurrences._l2norm(query), recurrences._l2norm(key)
            query, key, value, beta, g = [x.transpose(1, 2).float() for x in (query, key, value, beta, g)]
            query = query * query.shape[-1] ** -0.5

            def step(state, xs):
                q, k, v, gt, bt = xs
                state = state * gt.exp()[..., None, None]
                delta = (v - (state * k.unsqueeze(-1)).sum(-2)) * bt.unsqueeze(-1)
                state = state + k.unsqueeze(-1) * delta.unsqueeze(-2)
                return state.clone(), (state * q.unsqueeze(-1)).sum(-2)

            final, out = scan(step, initial_state, [t.movedim(2, 0) for t in (query, key, value, g, beta)])
            return out.movedim(0, 2).transpose(1, 2), final

        def gdn_inputs(length):
            return (torch.randn(1, length, k_heads, dim), torch.randn(1, length, k_heads, dim), torch.randn(1, length, v_heads, dim),
                    -torch.rand(1, length, v_heads), torch.rand(1, length, v_heads), torch.randn(1, v_heads, dim, dim) * 0.1)

        shapes = tuple({0: batch, 1: seq} for _ in range(5)) + ({0: batch},)
        gdn = {
            "ours: chunks of min(S, 64) in a Scan": _onnx_session(GDN(recurrences.chunk_gated_delta_rule), gdn_inputs(5), shapes, Path(tmp) / "d.onnx"),
            "Scan over tokens (recurrent form)": _onnx_session(GDN(token_scan), gdn_inputs(5), shapes, Path(tmp) / "e.onnx"),
            "opset 27: LinearAttention (gated_delta)": _onnx_session(
                GDN(recurrences.gated_delta_linear_attention), gdn_inputs(5), shapes, Path(tmp) / "f.onnx", opset=27
            ),
        }
        reference = modeling_qwen3_5.torch_chunk_gated_delta_rule
        print("| form | S = 1 | S = 512 | max abs diff vs transformers (S = 512) |")
        print("| --- | --- | --- | --- |")
        for label, session in gdn.items():
            feeds1 = {i.name: t.numpy() for i, t in zip(session.get_inputs(), gdn_inputs(1))}
            args = gdn_inputs(512)
            feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), args)}
            one = best(lambda: session.run(None, feeds1), repeat * 5)
            long = best(lambda: session.run(None, feeds), repeat)
            expected, _ = reference(*args[:3], g=args[3], beta=args[4], initial_state=args[5], output_final_state=True, use_qk_l2norm_in_kernel=True)
            diff = float(np.abs(session.run(None, feeds)[0] - expected.numpy()).max())
            print(f"| {label} | {one * 1e3:.3f} | {long * 1e3:.1f} | {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "optimum-onnx23-hybrid-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tables", default="1,2,3", help="comma-separated subset of 1,2,3,4")
    parser.add_argument("--models", default="", help="table 2: only the models whose label contains this")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tables = set(args.tables.split(","))
    print(f"torch threads {torch.get_num_threads()}; work folder {args.work}")
    if tables & {"1", "2", "4"}:
        model_tables(args.work, args.repeat, tables, args.models)
    if "3" in tables:
        kernel_tables(args.work, args.repeat)


if __name__ == "__main__":
    main()
