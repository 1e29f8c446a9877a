"""Runs in .venv-openvino (onnxruntime-openvino instead of onnxruntime): our ORTModelForCausalLM on
the folders given as JSON on stdin, once per provider, greedy; prints one JSON line with, per job,
the ids, the variant the session picked, its providers, session creation seconds and decode tok/s.

A job: {"folder", "prompt" (chat messages), "max_new_tokens", "provider", "provider_options",
"session_config" (entries for SessionOptions.add_session_config_entry)}."""

from __future__ import annotations

import json
import sys
import time
import traceback


def run(job: dict) -> dict:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from optimum_onnx23 import ORTModelForCausalLM

    options = ort.SessionOptions()
    for key, value in job.get("session_config", {}).items():
        options.add_session_config_entry(key, value)
    start = time.perf_counter()
    model = ORTModelForCausalLM.from_pretrained(
        job["folder"], provider=job["provider"], provider_options=job.get("provider_options"), session_options=options
    )
    created = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(job["folder"])
    ids = tokenizer.apply_chat_template(job["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up: the first run compiles on some providers
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=1, do_sample=False)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=job["max_new_tokens"], min_new_tokens=job["max_new_tokens"], do_sample=False)
    total = time.perf_counter() - start
    new = out.shape[1] - ids.shape[1]
    return {
        "ids": out[0, ids.shape[1]:].tolist(),
        "variant": model.variant,
        "providers": model.session.get_providers(),
        "session_seconds": round(created, 3),
        "decode_tok_s": round((new - 1) / max(total - prefill, 1e-9), 2),
        "onnxruntime": ort.__version__,
    }


def main() -> None:
    results = []
    for job in json.loads(sys.stdin.read()):
        try:
            results.append(run(job))
        except Exception as error:  # reported per job: one failing provider must not hide the others
            results.append({"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()[-4000:]})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
