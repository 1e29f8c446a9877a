"""The server scaled out on Ray Serve (`optimum_onnx23.serving.ray:build_app`): on a local Ray
cluster with two replicas, concurrent greedy completions through Ray's HTTP proxy answer the text
`generate()` gives for each prompt alone, a streamed request the same text, and the requests are
spread over both replicas (each response names its replica in `X-Onnx23-Replica`)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

try:
    import ray
    from ray import serve
except ImportError:  # a skip, and under CI=true a failure (conftest): the `ray` extra is installed there
    ray = None
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(ray is None, reason="ray is not installed (pip install 'optimum-onnx23[ray]')"),
]

NEW_TOKENS = 16
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The quick brown fox",
    "In 1492, Columbus",
    "Water boils at",
    "My favourite colour is",
    "1, 2, 3, 4,",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def expected(exported_dir) -> dict[str, str]:
    """Each prompt alone through `generate()`, greedy; the new tokens decoded without special tokens."""
    from transformers import AutoTokenizer

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(exported_dir("bundled"))
    tokenizer = AutoTokenizer.from_pretrained(model.folder)
    texts = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        texts[prompt] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return texts


@pytest.fixture(scope="module")
def base_url(exported_dir):
    from optimum_onnx23.serving.ray import build_app

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # Strings, as `serve run ... model=DIR num_replicas=2` passes them.
        app = build_app({"model": str(exported_dir("bundled")), "num_replicas": "2", "max_num_seqs": "4", "max_queue": "8"})
        serve.run(app, name="onnx23", route_prefix="/")
        deadline = time.monotonic() + 60
        while True:
            states = serve.status().applications["onnx23"].deployments["onnx23"].replica_states
            if states.get("RUNNING", 0) == 2:
                break
            assert time.monotonic() < deadline, f"replicas not running: {states}"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _complete(client, prompt: str):
    return client.post("/v1/completions", json={"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0})


def test_two_replicas_answer_as_generate(base_url, expected):
    import httpx

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            return await asyncio.gather(*(_complete(client, prompt) for prompt in PROMPTS))

    replicas: set[str] = set()
    # Ray's router sends each request to the less loaded of the two replicas; 8 requests in
    # flight at once land on both. A few more bursts only guard against an unlucky tie-break.
    for _ in range(4):
        responses = asyncio.run(burst())
        for prompt, response in zip(PROMPTS, responses):
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["choices"][0]["text"] == expected[prompt], prompt
            assert answer["usage"]["completion_tokens"] <= NEW_TOKENS
            replicas.add(response.headers["x-onnx23-replica"])
        if len(replicas) == 2:
            break
    assert len(replicas) == 2, f"all requests went to {replicas}"


def test_streamed_text_matches(base_url, expected):
    import httpx

    prompt = PROMPTS[0]
    body = {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True}
    pieces, done = [], False
    with httpx.Client(base_url=base_url, timeout=60) as client, client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            pieces.append(json.loads(data)["choices"][0]["text"])
    assert done
    assert "".join(pieces) == expected[prompt]


def test_other_routes(base_url, exported_dir):
    import httpx

    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok"}
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == [exported_dir("bundled").name]
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["role"] == "assistant"
        metrics = client.get("/metrics")
        assert "onnx23_num_requests_running" in metrics.text
        missing = client.get("/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_build_app_arguments():
    from optimum_onnx23.serving.ray import build_app, parse_args

    with pytest.raises(ValueError, match="the `model` argument is required"):
        build_app({"num_replicas": "2"})
    with pytest.raises(ValueError, match=r"unknown argument\(s\) replicas; accepted: .*num_replicas"):
        build_app({"model": "m", "replicas": "2"})
    with pytest.raises(ValueError, match="`max_num_seqs` must be an integer"):
        build_app({"model": "m", "max_num_seqs": "many"})
    config, options = parse_args({"model": "m", "max_num_seqs": "8", "max_queue": "24", "num_cpus": "2"})
    assert (config.max_num_seqs, config.max_queue) == (8, 24)
    assert options["max_ongoing_requests"] == 32
    assert options["ray_actor_options"] == {"num_cpus": 2.0}
    assert options["num_replicas"] == 1
