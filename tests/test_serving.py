"""`optimum-cli onnx23 serve`: the scheduler's rules alone, then the HTTP server on a real uvicorn
socket: concurrent greedy answers equal `generate()` for each prompt alone, streamed text equals
non-streamed, a dropped client frees its row, OpenAI's error bodies for 400 / 404 / 429, metrics;
and on the real checkpoint, 16 concurrent chat answers against `generate()`."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from serving_helpers import free_port, wait_healthy  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from optimum_onnx23.pipelines import ORTModelForCausalLM  # noqa: E402
from optimum_onnx23.serving.app import ServerConfig, create_app  # noqa: E402
from optimum_onnx23.serving.scheduler import MIN_PREFILL_CHUNK, Draining, Phase, QueueFull, Scheduler, Slot  # noqa: E402

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")


# ---- the scheduler, pure logic ----------------------------------------------------------------
def test_scheduler_admits_fcfs_prefills_in_chunks_and_decodes_between_chunks():
    s = Scheduler(max_num_seqs=2, max_queue=2, prefill_chunk=4)
    a, b = s.add("a", 10), s.add("b", 3)
    with pytest.raises(QueueFull):
        s.add("x", 1)
    plan = s.plan()
    assert plan.prefill == (a, 0, 4) and plan.decode == []
    c = s.add("c", 1)  # a left the queue for its prefill: room for one more
    s.prefilled(a, 4)
    assert s.plan().prefill == (a, 4, 8)
    s.prefilled(a, 4)
    plan = s.plan()
    assert plan.prefill == (a, 8, 10)
    s.prefilled(a, 2)
    assert a.phase is Phase.DECODE and s.decoding == [a]
    plan = s.plan()  # b prefills while a decodes
    assert plan.prefill == (b, 0, 3) and plan.decode == [a]
    s.prefilled(b, 3)
    plan = s.plan()
    assert plan.decode == [a, b] and plan.prefill is None  # two rows: the third waits
    assert s.num_running == 2 and s.num_waiting == 1 and c.phase is Phase.WAITING
    s.finish("a")
    plan = s.plan()
    assert plan.evict == [a] and plan.prefill == (c, 0, 1) and plan.decode == [b]


def test_scheduler_token_budget_shrinks_prefill_chunks_while_rows_decode():
    s = Scheduler(max_num_seqs=4, max_queue=4, prefill_chunk=64, max_num_batched_tokens=20)
    s.add("a", 100)
    plan = s.plan()
    assert plan.prefill[1:] == (0, 64)  # nothing decodes: the whole chunk
    s.prefilled(plan.prefill[0], 64)
    assert s.plan().prefill[1:] == (64, 100)
    s.prefilled(s.prefilling, 36)
    for name in ("b", "c"):
        s.add(name, 100)
    plan = s.plan()
    assert [x.request_id for x in plan.decode] == ["a"] and plan.prefill[1:] == (0, 19)  # 20 tokens: 1 decode + 19
    s.prefilled(plan.prefill[0], 100)  # b joins (the engine ran its whole prompt)
    plan = s.plan()
    assert len(plan.decode) == 2 and plan.prefill[1:] == (0, 18)
    tight = Scheduler(max_num_seqs=4, max_queue=4, prefill_chunk=64, max_num_batched_tokens=2)
    tight.decoding = [Slot(str(i), 1) for i in range(3)]
    assert tight.chunk_size() == MIN_PREFILL_CHUNK  # a prompt always advances


def test_scheduler_evicts_cancelled_and_finished_rows_at_the_next_step():
    s = Scheduler(max_num_seqs=4, max_queue=4, prefill_chunk=64)
    slots = [s.add(name, 2) for name in "abc"]
    for slot in slots:
        assert s.plan().prefill[0] is slot
        s.prefilled(slot, 2)
    s.cancel("b")
    s.finish("c")
    waiting = s.add("d", 5)
    s.cancel("d")
    plan = s.plan()
    assert {x.request_id for x in plan.evict} == {"b", "c", "d"} and plan.decode == [slots[0]]
    assert s.num_running == 1 and s.num_waiting == 0 and waiting.phase is Phase.DONE
    assert not s.cancel("b")  # gone
    s.draining = True
    with pytest.raises(Draining):
        s.add("e", 1)


# ---- the HTTP server on the bundled model --------------------------------------------------------
class Server:
    def __init__(self, folder, **options):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(ServerConfig(model=str(folder), served_model_name="tiny", **options))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_healthy(self.url)

    @property
    def engine(self):
        return self.app.state.onnx23.engine

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def tiny(exported_dir):
    folder = exported_dir("bundled")
    server = Server(folder, max_num_seqs=4, max_queue=8, prefill_chunk=8)
    yield server, folder
    server.stop()


PROMPTS = [f"Prompt {i}: ONNX is" + " a format" * i for i in range(6)]


def _reference(folder, prompts, max_new_tokens):
    model = ORTModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


async def _complete_all(url, bodies, route="/v1/completions"):
    async with httpx.AsyncClient(timeout=300) as client:
        return await asyncio.gather(*[client.post(url + route, json=body) for body in bodies])


def test_concurrent_greedy_completions_equal_generate_alone(tiny):
    """6 requests, 4 rows and chunked prefill: rows join and leave the running batch."""
    server, folder = tiny
    bodies = [{"model": "tiny", "prompt": p, "max_tokens": 10 + 3 * i, "temperature": 0} for i, p in enumerate(PROMPTS)]
    responses = asyncio.run(_complete_all(server.url, bodies))
    expected = [_reference(folder, [p], 10 + 3 * i)[0] for i, p in enumerate(PROMPTS)]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for response, text, prompt in zip(responses, expected, PROMPTS):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "text_completion" and body["model"] == "tiny"
        assert body["choices"][0]["text"] == text
        assert body["usage"]["prompt_tokens"] == len(tokenizer(prompt).input_ids)
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert server.metric("onnx23_num_requests_running") == 0
    assert server.metric("onnx23_time_to_first_token_seconds_count") >= len(PROMPTS)
    assert server.metric("onnx23_generation_tokens_total") >= sum(r.json()["usage"]["completion_tokens"] for r in responses)


def test_streamed_text_equals_non_streamed_and_ends_with_done(tiny):
    server, _ = tiny
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16, "temperature": 0}
    whole = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
    events = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]  # include_usage: a last chunk
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == whole["choices"][0]["finish_reason"]


def test_a_dropped_client_frees_its_row(tiny):
    server, _ = tiny
    body = {"model": "tiny", "prompt": "A long answer:", "max_tokens": 200, "min_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # the first token arrived: hang up
    deadline = time.monotonic() + 10
    while server.engine.num_running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.engine.num_running == 0 and server.metric("onnx23_request_finished_total") >= 1
    text = httpx.get(f"{server.url}/metrics").text
    assert 'onnx23_request_finished_total{finished_reason="abort"}' in text


@pytest.mark.parametrize(
    "body, status, param, words",
    [
        ({"prompt": "x", "n": 2}, 400, "n", "`n` must be 1"),
        ({"prompt": "x", "logprobs": 2}, 400, "logprobs", "`logprobs` is not supported"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, "tools", "`tools` is not supported"),
        ({"prompt": "x", "temperature": -1}, 400, "temperature", "must be >= 0"),
        ({"prompt": "x", "max_tokens": 10_000}, 400, "max_tokens", "maximum context length is 256"),
        ({"prompt": ""}, 400, "prompt", "non-empty"),
        ({"prompt": "x", "model": "other"}, 404, "model", "does not exist"),
    ],
)
def test_bad_requests_get_openai_error_bodies(tiny, body, status, param, words):
    server, _ = tiny
    route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(server.url + route, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["param"] == param and set(error) == {"message", "type", "param", "code"}


def test_invalid_json_and_a_full_queue(tiny):
    server, _ = tiny
    response = httpx.post(f"{server.url}/v1/completions", content=b"{not json", timeout=30)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    # 8 waiting fill the queue (4 rows, 8 waiting): the next ones are refused with 429 and Retry-After.
    slow = {"model": "tiny", "prompt": "Count:", "max_tokens": 120, "min_tokens": 120, "temperature": 0}
    responses = asyncio.run(_complete_all(server.url, [slow] * 16))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 8 and 429 in codes, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert server.engine.num_running == 0 and server.engine.num_waiting == 0


def test_models_and_health(tiny):
    server, _ = tiny
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 256
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/v1/nothing").json()["error"]["code"] == "not_found"


def test_repetition_penalty_and_min_tokens_match_generate(tiny):
    """vLLM's extras map onto transformers' processors: the same greedy tokens as generate()."""
    server, folder = tiny
    model = ORTModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("ONNX is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=20, min_new_tokens=20, repetition_penalty=1.5, do_sample=False)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    body = {"model": "tiny", "prompt": "ONNX is", "max_tokens": 20, "min_tokens": 20, "repetition_penalty": 1.5, "temperature": 0}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    assert response["choices"][0]["text"] == expected and response["usage"]["completion_tokens"] == 20


def test_stop_strings_are_not_emitted(tiny):
    server, _ = tiny
    body = {"model": "tiny", "prompt": "ONNX is", "max_tokens": 30, "temperature": 0}
    full = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    stop = full[5:8]
    assert stop and stop in full
    cut = httpx.post(f"{server.url}/v1/completions", json={**body, "stop": [stop]}, timeout=60).json()["choices"][0]
    assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible_under_concurrency(tiny):
    server, _ = tiny
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0.9, "top_p": 0.9, "top_k": 40, "seed": 7}
    responses = asyncio.run(_complete_all(server.url, [body, {**body, "seed": 8}, body]))
    texts = [r.json()["choices"][0]["text"] for r in responses]
    assert texts[0] == texts[2]


# ---- the real checkpoint -----------------------------------------------------------------------
@pytest.mark.real_checkpoint
def test_sixteen_concurrent_chats_on_the_real_checkpoint(real_exported_dir):
    """At least 15 of 16 concurrent greedy answers equal generate() alone (batched and single runs
    may differ in float rounding, which can flip a near-tie)."""
    folder = real_exported_dir()
    server = Server(folder, max_num_seqs=16)
    try:
        questions = [f"Tell me one fact about the number {i}." for i in range(16)]
        bodies = [{"messages": [{"role": "user", "content": q}], "max_tokens": 24, "temperature": 0} for q in questions]
        responses = asyncio.run(_complete_all(server.url, bodies, "/v1/chat/completions"))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in questions]
        model = ORTModelForCausalLM.from_pretrained(folder)
        same = 0
        for prompt, response in zip(prompts, responses):
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=24, do_sample=False)
            same += tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == response.json()["choices"][0]["message"]["content"]
        assert same >= 15, f"{same}/16 equal generate()"
        assert server.metric("onnx23_num_requests_running") == 0
    finally:
        server.stop()


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_load_with_dropped_connections_and_invalid_bodies(tiny):
    """200 requests, 32 clients at a time: 10% hang up mid-stream, 10% send invalid bodies. Every
    valid request gets generate()'s text, nothing stays running, RSS stays flat after warm-up."""
    server, folder = tiny
    prompts = [f"Load {i % 25}: tell me" for i in range(200)]
    expected = dict(zip(sorted(set(prompts)), _reference(folder, sorted(set(prompts)), 12)))
    invalid = [{"prompt": 5}, {"prompt": "x", "temperature": "hot"}, {"prompt": "x", "n": 3}, {"messages": []}]

    async def one(client, i):
        body = {"model": "tiny", "prompt": prompts[i], "max_tokens": 12, "temperature": 0}
        if i % 10 == 3:  # invalid body
            response = await client.post(f"{server.url}/v1/completions", json=invalid[i % len(invalid)])
            return "invalid", response.status_code, None
        if i % 10 == 7:  # drop the connection after the first chunk
            async with client.stream("POST", f"{server.url}/v1/completions", json={**body, "max_tokens": 60, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break
            return "dropped", r.status_code, None
        response = await client.post(f"{server.url}/v1/completions", json=body)
        return "valid", response.status_code, (i, response.json()["choices"][0]["text"] if response.status_code == 200 else response.text)

    async def run(indices):
        limit = asyncio.Semaphore(8)  # under the tiny server's capacity (4 rows + 8 waiting): no 429 expected

        async def bounded(client, i):
            async with limit:
                return await one(client, i)

        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[bounded(client, i) for i in indices])

    warm = asyncio.run(run(range(50)))
    rss_warm = _rss_mb()
    rest = asyncio.run(run(range(50, 200)))
    rss_end = _rss_mb()
    results = warm + rest
    assert sum(kind == "invalid" for kind, _, _ in results) == 20 and all(code == 400 for kind, code, _ in results if kind == "invalid")
    valid = [v for k, c, v in results if k == "valid" and c == 200]
    assert len(valid) == 160, [c for k, c, _ in results if k == "valid"]
    assert all(text == expected[prompts[i]] for i, text in valid)
    deadline = time.monotonic() + 10
    while (server.engine.num_running or server.engine.num_waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("onnx23_num_requests_running") == 0 and server.metric("onnx23_num_requests_waiting") == 0
    assert rss_end - rss_warm < 40, f"RSS grew {rss_end - rss_warm:.1f} MB after warm-up"


@pytest.mark.parametrize("family", ["mixtral", "lfm2", "qwen3_next"])
def test_families_batch_like_generate(family, exported_dir, hybrid_exported_dir):
    """Rows join and leave on MoE and hybrid caches too (conv and recurrent states concatenated,
    attention K/V left-padded): 4 concurrent greedy answers on 2 rows equal generate() alone."""
    folder = exported_dir(family) if family == "mixtral" else hybrid_exported_dir(family)
    server = Server(folder, max_num_seqs=2, max_queue=8, prefill_chunk=4)
    try:
        prompts = PROMPTS[:4]
        bodies = [{"model": "tiny", "prompt": p, "max_tokens": 6 + 2 * i, "temperature": 0} for i, p in enumerate(prompts)]
        responses = asyncio.run(_complete_all(server.url, bodies))
        expected = [_reference(folder, [p], 6 + 2 * i)[0] for i, p in enumerate(prompts)]
        assert [r.json()["choices"][0]["text"] for r in responses] == expected
    finally:
        server.stop()
