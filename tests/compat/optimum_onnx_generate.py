"""Run under optimum-onnx's own environment (transformers 4.x): load exported folders with its
ORTModelForCausalLM and AutoTokenizer, greedy-generate, print the ids as JSON.

    python optimum_onnx_generate.py FOLDER MAX_NEW_TOKENS PROMPT...    -> {"use_cache", "ids"}
    python optimum_onnx_generate.py --many < [{"folder", "max_new_tokens", "prompts"}, ...]
                                                                       -> [{"use_cache", "ids"} | {"error"}, ...]
`--many` loads the libraries once for all folders (most of a run is their import)."""

import json
import sys
import traceback

from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer


def generate(folder, max_new_tokens, prompts):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = ORTModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return {"use_cache": bool(model.config.use_cache), "ids": output.tolist()}


if sys.argv[1] == "--many":
    results = []
    for job in json.load(sys.stdin):
        try:
            results.append(generate(job["folder"], job["max_new_tokens"], job["prompts"]))
        except Exception as error:  # reported per folder; the test names the family that failed
            results.append({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]})
    print(json.dumps(results))
else:
    print(json.dumps(generate(sys.argv[1], int(sys.argv[2]), sys.argv[3:])))
