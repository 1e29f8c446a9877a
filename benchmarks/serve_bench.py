"""Serving throughput on the real checkpoint: `generate()` one request at a time against the server
(continuous batching) at concurrency 1 and N, for each exported folder given (fp32 main graph, a
folder with the int4 variant attached, ...), same run, same seeded requests.

Requests (issue 19's mix, seeded): prompts of 32/128/512 tokens (50/35/15%), `max_tokens`
64/128/256 with `ignore_eos` (same mix), greedy. Clients are closed-loop: each sends its next
request when the previous one finished. Reported per row: output tok/s, TTFT p50/p95, inter-token
latency p50/p95 (from the streamed chunks), each server's peak RSS (our servers run as
`optimum-cli onnx23 serve` processes, OpenVINO GenAI's pipeline in its own process).

    .venv/bin/python benchmarks/serve_bench.py FOLDER [FOLDER ...] [--requests 64] [--clients 16]
    [--kv-cache slots dynamic] [--max-num-batched-tokens 64]
    [--url http://127.0.0.1:8080 --url-name llama-server]   # another OpenAI server, same requests
    [--ov-cb OV_FOLDER --ov-python .venv-ovgenai/bin/python]  # OpenVINO GenAI's ContinuousBatchingPipeline

Each `--kv-cache` layout gets its own server rows (concurrency 1 for the first layout only).
"x generate" compares with the same folder's `generate()` row (the same graph, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mb  # noqa: E402

PROMPT_MIX = ((32, 0.50), (128, 0.35), (512, 0.15))
TOKENS_MIX = ((64, 0.50), (128, 0.35), (256, 0.15))


def make_requests(tokenizer, count: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt token ids, max_tokens) pairs; prompts are distinct slices of a seeded word stream."""
    rng = random.Random(seed)
    words = "the of and to in is was for on that with as by at from his her an were are which this be or had it not".split()
    requests = []
    for i in range(count):
        length = rng.choices([p for p, _ in PROMPT_MIX], [w for _, w in PROMPT_MIX])[0]
        max_tokens = rng.choices([t for t, _ in TOKENS_MIX], [w for _, w in TOKENS_MIX])[0]
        text = f"Request {i}: " + " ".join(rng.choice(words) for _ in range(length * 2))
        ids = tokenizer(text).input_ids[:length]
        requests.append((ids, max_tokens))
    return requests


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def bench_generate(folder: str, requests) -> dict:
    import torch

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(folder)
    model.generate([requests[0][0]], max_new_tokens=4)  # warm-up
    tokens, ttfts = 0, []
    start = time.perf_counter()
    for ids, max_tokens in requests:
        t0 = time.perf_counter()
        model.generate(torch.tensor([ids]), max_new_tokens=1, min_new_tokens=1)
        ttfts.append(time.perf_counter() - t0)
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, min_new_tokens=max_tokens)
        tokens += out.shape[1] - len(ids)
    elapsed = time.perf_counter() - start - sum(ttfts)  # the TTFT probes are not part of the work
    return {"tok/s": tokens / elapsed, "ttft": ttfts, "itl": [], "tokens": tokens}


async def _client(url: str, queue: list, model: str, ttfts: list, itls: list, counts: list) -> None:
    import httpx

    # A new connection per request: reusing a kept-alive one races with the server closing it
    # (llama-server's keep-alive timeout ended a run with "Server disconnected").
    async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while queue:
            ids, max_tokens = queue.pop()
            body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            start = last = time.perf_counter()
            first = True
            async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    now = time.perf_counter()
                    if chunk.get("choices") and chunk["choices"][0].get("text"):
                        (ttfts.append(now - start) if first else itls.append(now - last))
                        first, last = False, now
                    if chunk.get("usage"):
                        counts.append(chunk["usage"]["completion_tokens"])


def bench_server(url: str, model: str, requests, clients: int) -> dict:
    ttfts, itls, counts = [], [], []
    queue = list(reversed(requests))

    async def run():
        await asyncio.gather(*[_client(url, queue, model, ttfts, itls, counts) for _ in range(clients)])

    start = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - start
    return {"tok/s": sum(counts) / elapsed, "ttft": ttfts, "itl": itls, "counts": counts}


class ServerProcess:
    """`optimum-cli onnx23 serve` in its own process, so each row's peak RSS is its server's."""

    def __init__(self, folder: str, max_num_seqs: int, kv_cache: str = "auto", max_num_batched_tokens: int | None = 64):
        import subprocess

        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        cli = Path(sys.executable).with_name("optimum-cli")
        command = [str(cli), "onnx23", "serve", folder, "--port", str(self.port), "--served-model-name", "bench",
                   "--max-num-seqs", str(max_num_seqs), "--max-queue", "1024", "--kv-cache", kv_cache, "--log-level", "warning"]
        if max_num_batched_tokens:
            command += ["--max-num-batched-tokens", str(max_num_batched_tokens)]
        self.log = Path(f"/tmp/serve_bench-{self.port}.log")
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        text = self.log.read_text()
        self.layout = "dynamic" if "KV slots do not apply" in text else kv_cache

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", help="exported folders (the variant for CPU is selected as sessions do)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--url", help="another OpenAI-compatible server to run the same requests against")
    parser.add_argument("--url-name", default="external server")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--tokenizer", help="where to read the tokenizer when no folder is given")
    parser.add_argument("--kv-cache", nargs="+", default=["auto"], choices=("auto", "slots", "dynamic"))
    parser.add_argument("--max-num-batched-tokens", type=int, default=64, help="0: no per-step budget (prefill chunks of 256)")
    parser.add_argument("--ov-cb", nargs="*", default=[], help="optimum-intel export folders for OpenVINO GenAI's ContinuousBatchingPipeline")
    parser.add_argument("--ov-python", default=".venv-ovgenai/bin/python", help="the python with openvino-genai (benchmarks/ov_cb_bench.py)")
    parser.add_argument("--ov-precision", nargs="+", default=["f32"], help="INFERENCE_PRECISION_HINT per --ov-cb run: f32, default")
    args = parser.parse_args()
    if not args.folders and not args.url:
        parser.error("pass exported folders, --url, or both")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.folders[0] if args.folders else args.tokenizer)
    requests = make_requests(tokenizer, args.requests)
    rows = []  # (label, result, the same folder's generate() tok/s)
    budget = args.max_num_batched_tokens or None

    def add(label, result, base=None):
        rows.append((label, result, base))
        print(f"[serve_bench] {label}: {result['tok/s']:.1f} tok/s ({sum(result.get('counts', [])) or result.get('tokens', '?')} tokens)",
              file=sys.stderr, flush=True)

    for folder in args.folders:
        name = Path(folder).name
        base = None
        if not args.skip_generate:
            add(f"{name}: generate() one at a time", bench_generate(folder, requests))
            base = rows[-1][1]["tok/s"]
        report = Path(folder) / "export_report.json"
        static = report.is_file() and json.loads(report.read_text()).get("cache") == "static"
        for i, layout in enumerate(["auto"] if static else args.kv_cache):  # a static export runs on its own buffers
            server = ServerProcess(folder, args.clients, layout, budget)
            layout = "static" if static else server.layout
            bench_server(server.url, "bench", requests[:2], 1)  # warm-up
            if i == 0:
                add(f"{name}: server ({layout}), concurrency 1", bench_server(server.url, "bench", requests, 1), base)
            result = bench_server(server.url, "bench", requests, args.clients)
            add(f"{name}: server ({layout}, RSS {server.peak_rss_mb():.0f} MB), concurrency {args.clients}", result, base)
            server.stop()
    if args.url:
        add(f"{args.url_name}, concurrency {args.clients}", bench_server(args.url, args.url_name, requests, args.clients))
    for folder in args.ov_cb:
        for precision in args.ov_precision:
            import subprocess

            tokenizer_dir = args.folders[0] if args.folders else args.tokenizer
            command = [args.ov_python, str(Path(__file__).parent / "ov_cb_bench.py"), folder, "--tokenizer", tokenizer_dir,
                       "--requests", str(args.requests), "--clients", str(args.clients)]
            out = subprocess.run([*command, "--precision", precision], capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            add(f"OpenVINO GenAI ContinuousBatchingPipeline {Path(folder).name} ({precision}, RSS {result['rss_mb']:.0f} MB), "
                f"concurrency {args.clients}", result)
    print(f"\n{args.requests} requests, {args.clients} clients, --max-num-batched-tokens {budget}; "
          f"peak RSS of the benchmark process ({'generate() rows' if not args.skip_generate else 'clients'}) {peak_rss_mb():.0f} MB\n")
    print("| row | output tok/s | x generate | TTFT p50 s | TTFT p95 s | ITL p50 ms | ITL p95 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r, base in rows:
        itl50 = statistics.median(r["itl"]) * 1e3 if r["itl"] else float("nan")
        ratio = f"{r['tok/s'] / base:.2f}" if base else "-"
        print(f"| {name} | {r['tok/s']:.1f} | {ratio} | {percentile(r['ttft'], .5):.3f} | "
              f"{percentile(r['ttft'], .95):.3f} | {itl50:.1f} | {percentile(r['itl'], .95) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
