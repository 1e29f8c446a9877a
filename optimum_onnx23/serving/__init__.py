"""Stage 5b, serving: an OpenAI-compatible HTTP server with continuous batching over one
onnxruntime session (`optimum-cli onnx23 serve`), and a Ray Serve builder to scale it out.

- `scheduler.py`: admission, chunked prefill and eviction as pure logic;
- `sampling.py`: per-row sampling parameters and seeded generators;
- `engine.py`: the thread that runs the scheduler's plan on the session;
- `protocol.py`: OpenAI's request fields and error body; `app.py`: the routes; `metrics.py`;
- `ray.py`: `build_app` for `serve run optimum_onnx23.serving.ray:build_app model=DIR`.
"""
