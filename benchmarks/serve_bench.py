"""Serving throughput on the real checkpoint: `generate()` one request at a time against the server
(continuous batching) at concurrency 1 and N, for each exported folder given (fp32 main graph, a
folder with the int4 variant attached, ...), same run, same seeded requests.

Requests (issue 19's mix, seeded): prompts of 32/128/512 tokens (50/35/15%), `max_tokens`
64/128/256 with `ignore_eos` (same mix), greedy. Clients are closed-loop: each sends its next
request when the previous one finished. Reported per row: output tok/s, TTFT p50/p95, inter-token
latency p50/p95 (from the streamed chunks), peak RSS of this process (the server runs in it).

    .venv/bin/python benchmarks/serve_bench.py FOLDER [FOLDER ...] [--requests 64] [--clients 16]
    [--kv-cache slots dynamic] [--max-num-batched-tokens 64]
    [--url http://127.0.0.1:8080 --url-name llama-server]   # another OpenAI server, same requests

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
import threading
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
    return {"tok/s": tokens / elapsed, "ttft": ttfts, "itl": []}


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
    return {"tok/s": sum(counts) / elapsed, "ttft": ttfts, "itl": itls}


def start_server(folder: str, max_num_seqs: int, kv_cache: str = "auto", max_num_batched_tokens: int | None = 64):
    import httpx
    import uvicorn

    from optimum_onnx23.serving.app import ServerConfig, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(ServerConfig(
        model=folder, served_model_name="bench", max_num_seqs=max_num_seqs, max_queue=1024, kv_cache=kv_cache,
        max_num_batched_tokens=max_num_batched_tokens,
    ))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


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
        print(f"[serve_bench] {label}: {result['tok/s']:.1f} tok/s", file=sys.stderr, flush=True)

    for folder in args.folders:
        name = Path(folder).name
        base = None
        if not args.skip_generate:
            add(f"{name}: generate() one at a time", bench_generate(folder, requests))
            base = rows[-1][1]["tok/s"]
        for i, layout in enumerate(args.kv_cache):
            server, url = start_server(folder, args.clients, layout, budget)
            layout = server.config.app.state.onnx23.engine.batch.layout
            bench_server(url, "bench", requests[:2], 1)  # warm-up
            if i == 0:
                add(f"{name}: server ({layout}), concurrency 1", bench_server(url, "bench", requests, 1), base)
            add(f"{name}: server ({layout}), concurrency {args.clients}", bench_server(url, "bench", requests, args.clients), base)
            server.should_exit = True
            time.sleep(1)
    if args.url:
        add(f"{args.url_name}, concurrency {args.clients}", bench_server(args.url, args.url_name, requests, args.clients))
    print(f"\n{args.requests} requests, {args.clients} clients, --max-num-batched-tokens {budget}; "
          f"peak RSS of this process {peak_rss_mb():.0f} MB\n")
    print("| row | output tok/s | x generate | TTFT p50 s | TTFT p95 s | ITL p50 ms | ITL p95 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r, base in rows:
        itl50 = statistics.median(r["itl"]) * 1e3 if r["itl"] else float("nan")
        ratio = f"{r['tok/s'] / base:.2f}" if base else "-"
        print(f"| {name} | {r['tok/s']:.1f} | {ratio} | {percentile(r['ttft'], .5):.3f} | "
              f"{percentile(r['ttft'], .95):.3f} | {itl50:.1f} | {percentile(r['itl'], .95) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
