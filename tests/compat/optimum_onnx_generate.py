"""Run under optimum-onnx's own environment (transformers 4.x): load an exported folder with its
ORTModelForCausalLM and AutoTokenizer, greedy-generate, print the ids as JSON."""

import json
import sys

from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer

folder, max_new_tokens, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tokenizer = AutoTokenizer.from_pretrained(folder)
tokenizer.padding_side = "left"
model = ORTModelForCausalLM.from_pretrained(folder)
inputs = tokenizer(prompts, return_tensors="pt", padding=True)
output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
print(json.dumps({"use_cache": bool(model.config.use_cache), "ids": output.tolist()}))
