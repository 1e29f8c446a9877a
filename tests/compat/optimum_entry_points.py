"""Runs in a venv where optimum-onnx23 is installed from its wheel (tests/test_optimum_namespace.py):
optimum's own entry points and optimum-onnx's documented causal-LM usage, as a user writes them.

Usage: python optimum_entry_points.py EXPORTED_FOLDER CHECKPOINT WORK_FOLDER RESULT_JSON REAL_EXPORTED_FOLDER
(the tiny bundled checkpoint, its export, and the export of the real SmolLM2-135M-Instruct).
Writes what each snippet returned to RESULT_JSON; the test compares it with transformers.
"""

import json
import os
import sys
from pathlib import Path

exported, checkpoint, work, result_path, real_exported = sys.argv[1:6]
work = Path(work)
PROMPT = "He never went out without a book under his arm"
results = {}

import optimum.onnxruntime  # noqa: E402

import optimum_onnx23  # noqa: E402

results["modules"] = {"optimum.onnxruntime": optimum.onnxruntime.__file__, "optimum_onnx23": optimum_onnx23.__file__}

# 1. optimum's own pipeline, accelerator="ort" (optimum 2.x imports optimum.onnxruntime.pipeline)
from optimum.pipelines import pipeline  # noqa: E402

pipe = pipeline("text-generation", model=exported, accelerator="ort")
results["pipeline_class"] = [cls.__name__ for cls in type(pipe).__mro__]
results["pipeline"] = pipe(PROMPT, max_new_tokens=16, do_sample=False)
results["pipeline_batch"] = pipe([PROMPT, "ONNX is"], max_new_tokens=12, do_sample=False, batch_size=2)
real_pipe = pipeline("text-generation", model=real_exported, accelerator="ort")
results["real_pipeline"] = real_pipe([{"role": "user", "content": "What is ONNX?"}], max_new_tokens=24, do_sample=False)
try:
    pipeline("text-generation", model=exported)
    results["accelerator_none"] = None
except ImportError as error:
    results["accelerator_none"] = str(error)

# 2. from optimum.onnxruntime import ORTModelForCausalLM; from_pretrained(checkpoint, export=True), twice
import optimum_onnx23.exporters as exporters  # noqa: E402

export_calls = []
original_export = exporters.export


def counting_export(*args, **kwargs):
    export_calls.append(str(args[1]))
    return original_export(*args, **kwargs)


exporters.export = counting_export

from optimum.onnxruntime import ORTModelForCausalLM  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

tokenizer = AutoTokenizer.from_pretrained(checkpoint)
inputs = tokenizer([PROMPT], return_tensors="pt")
print("@@ first from_pretrained(export=True)", file=sys.stderr, flush=True)
model = ORTModelForCausalLM.from_pretrained(checkpoint, export=True)
results["export_calls_first"] = list(export_calls)
onnx_mtime = (model.folder / "model.onnx").stat().st_mtime_ns
print("@@ second from_pretrained(export=True)", file=sys.stderr, flush=True)
again = ORTModelForCausalLM.from_pretrained(checkpoint, export=True)
results["export_calls_second"] = list(export_calls)
results["export_folders"] = [str(model.folder), str(again.folder)]
results["export_onnx_unchanged"] = (again.folder / "model.onnx").stat().st_mtime_ns == onnx_mtime
results["export_ids"] = model.generate(**inputs, max_new_tokens=16, do_sample=False).tolist()
results["export_again_ids"] = again.generate(**inputs, max_new_tokens=16, do_sample=False).tolist()

# 3. save_pretrained -> from_pretrained
saved = work / "saved"
model.save_pretrained(saved)
results["saved_files"] = sorted(os.listdir(saved))
results["reloaded_ids"] = ORTModelForCausalLM.from_pretrained(saved).generate(**inputs, max_new_tokens=16, do_sample=False).tolist()

# 4. optimum-onnx's documented causal-LM example (README.md and usage_guides/models.mdx of 0.1.0),
#    unchanged except for the model ids: the ONNX checkpoint is our Hub layout of the export.
import torch  # noqa: E402

from optimum_onnx23.publish import save_pretrained as save_hub_layout  # noqa: E402

onnx_repo = work / "onnx-community-tiny-llama"
save_hub_layout(model.folder, onnx_repo)
README_EXAMPLE = """
from transformers import AutoTokenizer, pipeline
from optimum.onnxruntime import ORTModelForCausalLM

model = ORTModelForCausalLM.from_pretrained("onnx-community/Llama-3.2-1B", subfolder="onnx") # ONNX checkpoint
tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-3.2-1B")

pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
result = pipe("He never went out without a book under his arm")
"""
example = README_EXAMPLE.replace("onnx-community/Llama-3.2-1B", str(onnx_repo)).replace("meta-llama/Llama-3.2-1B", checkpoint)
torch.manual_seed(0)  # the pipeline samples by default (transformers 5): same seed as the reference
namespace = {}
exec(example, namespace)
results["readme_example"] = namespace["result"]

# 5. ORTModelForCausalLM's docstring example (TEXT_GENERATION_EXAMPLE of modeling_decoder.py)
DOCSTRING_EXAMPLE = """
from transformers import AutoTokenizer
from optimum.onnxruntime import ORTModelForCausalLM
import torch

tokenizer = AutoTokenizer.from_pretrained("optimum/gpt2")
model = ORTModelForCausalLM.from_pretrained("optimum/gpt2")

inputs = tokenizer("My name is Arthur and I live in", return_tensors="pt")

gen_tokens = model.generate(**inputs,do_sample=True,temperature=0.9, min_length=20,max_length=20)
decoded = tokenizer.batch_decode(gen_tokens)
"""
# "optimum/gpt2" is both the tokenizer and the ONNX model: the real checkpoint's export holds both
# (the bundled byte-level tokenizer makes the prompt longer than max_length=20).
example = DOCSTRING_EXAMPLE.replace("optimum/gpt2", real_exported)
torch.manual_seed(0)
namespace = {}
exec(example, namespace)
results["docstring_example"] = namespace["gen_tokens"].tolist()

# 6. the optimum-onnx names this package does not cover
for statement in (
    "from optimum.onnxruntime import ORTModelForSequenceClassification",
    "from optimum.onnxruntime import ORTQuantizer",
    "from optimum.onnxruntime.configuration import AutoQuantizationConfig",
):
    try:
        exec(statement, {})
        results[statement] = None
    except ImportError as error:
        results[statement] = str(error)

Path(result_path).write_text(json.dumps(results))
