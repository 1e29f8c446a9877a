"""OpenVINO GenAI's ContinuousBatchingPipeline on serve_bench's requests: the same seeded prompts
(token ids) and `max_tokens` with `ignore_eos`, greedy, N closed-loop clients simulated in one
`step()` loop (a client's next request is added when its previous one finishes). Prefix caching
off (the prompts are distinct anyway). Prints one JSON object: output tok/s, TTFT and inter-token
latencies, the peak RSS of this process.

Runs in an environment with `openvino-genai` (it conflicts with ours: see
scripts/openvino_genai_env.sh); serve_bench.py calls it with `--ov-cb FOLDER --ov-python PY`.

    PY benchmarks/ov_cb_bench.py OV_FOLDER --tokenizer HF_FOLDER [--requests 64] [--clients 16]
        [--precision f32|default] [--max-num-batched-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mb  # noqa: E402
from serve_bench import make_requests  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--precision", default="default", help="INFERENCE_PRECISION_HINT: f32, or default (bf16 where the CPU has it)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=256)
    args = parser.parse_args()

    import numpy as np
    import openvino as ov
    import openvino_genai as genai
    from transformers import AutoTokenizer

    requests = make_requests(AutoTokenizer.from_pretrained(args.tokenizer), args.requests)
    scheduler = genai.SchedulerConfig()
    scheduler.max_num_seqs = args.clients
    scheduler.max_num_batched_tokens = args.max_num_batched_tokens
    scheduler.enable_prefix_caching = False
    scheduler.cache_size = 2  # GB of KV blocks: 16 rows x 768 positions x 46 KB need 0.6
    properties = {} if args.precision == "default" else {"INFERENCE_PRECISION_HINT": args.precision}
    pipe = genai.ContinuousBatchingPipeline(args.folder, scheduler, "CPU", properties)

    def config(max_tokens: int):
        c = genai.GenerationConfig()
        c.max_new_tokens = c.min_new_tokens = max_tokens
        c.ignore_eos = True
        return c

    # warm-up
    pipe.add_request(10**6, ov.Tensor(np.array([requests[0][0]], dtype=np.int64)), config(4))
    while pipe.has_non_finished_requests():
        pipe.step()

    queue = list(enumerate(requests))[::-1]
    active: dict[int, tuple] = {}  # id -> (handle, start, last, count)
    ttfts, itls, tokens = [], [], 0
    start = time.perf_counter()

    def admit() -> None:
        while queue and len(active) < args.clients:
            i, (ids, max_tokens) = queue.pop()
            handle = pipe.add_request(i, ov.Tensor(np.array([ids], dtype=np.int64)), config(max_tokens))
            active[i] = [handle, time.perf_counter(), None, 0]

    admit()
    while active:
        pipe.step()
        now = time.perf_counter()
        for i, entry in list(active.items()):
            handle = entry[0]
            if handle.can_read():
                new = sum(len(out.generated_ids) for out in handle.read().values())
                if new:
                    (ttfts.append(now - entry[1]) if entry[2] is None else itls.append(now - entry[2]))
                    entry[2], entry[3] = now, entry[3] + new
            if handle.get_status() != genai.GenerationStatus.RUNNING:
                tokens += entry[3]
                del active[i]
        admit()
    elapsed = time.perf_counter() - start
    print(json.dumps({"tok/s": tokens / elapsed, "ttft": ttfts, "itl": itls, "rss_mb": peak_rss_mb(), "tokens": tokens}))


if __name__ == "__main__":
    main()
