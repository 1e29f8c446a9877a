"""The card's transformers.js snippet, run as written (node + @huggingface/transformers) on the Hub layout.

transformers.js is an npm package: set OPTIMUM_ONNX23_TRANSFORMERS_JS to a folder where
`npm install --ignore-scripts @huggingface/transformers@4` was run (it brings onnxruntime-node's
CPU binaries in the tarball; --ignore-scripts skips its optional GPU download).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from architecture_records import record

from optimum_onnx23.publish import save_pretrained

REPO_ID = "onnx-community-test/tiny-llama-onnx23"
JS_ROOT = os.environ.get("OPTIMUM_ONNX23_TRANSFORMERS_JS", "")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not shutil.which("node") or not (Path(JS_ROOT) / "node_modules" / "@huggingface" / "transformers").is_dir(),
        reason="transformers.js is not installed: set OPTIMUM_ONNX23_TRANSFORMERS_JS to a folder with "
        "`npm install --ignore-scripts @huggingface/transformers@4` done (needs node)",
    ),
]
PROMPTS = ["ONNX is", "The tiny model reads a much longer prompt than the others", "Hi"]
NEW_TOKENS = 10
# transformers.js' own tokenizer and greedy generate() on a left-padded batch, token ids out. (Its
# generate() has no beam search: num_beams is ignored, so greedy is what is compared.)
IDS_SCRIPT = """
import { env, AutoModelForCausalLM, AutoTokenizer, Tensor } from "@huggingface/transformers";
env.allowRemoteModels = false;
env.localModelPath = process.argv.at(-4);
const repo = process.argv.at(-3), prompts = JSON.parse(process.argv.at(-2)), [ids, mask] = JSON.parse(process.argv.at(-1));
const tokenizer = await AutoTokenizer.from_pretrained(repo);
tokenizer.padding_side = "left";
const encoded = tokenizer(prompts, { padding: true });
const rows = (tensor) => tensor.tolist().map((row) => row.map(Number));
console.log("TOKENS " + JSON.stringify([rows(encoded.input_ids), rows(encoded.attention_mask)]));
const model = await AutoModelForCausalLM.from_pretrained(repo, { dtype: "fp32" });
const tensor = (r) => new Tensor("int64", BigInt64Array.from(r.flat().map(BigInt)), [r.length, r[0].length]);
const out = await model.generate({
  input_ids: tensor(ids), attention_mask: tensor(mask), max_new_tokens: NEW, min_new_tokens: NEW, do_sample: false,
});
console.log("IDS " + JSON.stringify(rows(out)));
"""


def _run_card_snippet(card_text: str, models_root: Path) -> str:
    snippet = re.search(r"```js\n(.*?)```", card_text, re.S).group(1)
    # Local files only: the repo id resolves under models_root, as it would on the Hub.
    code = snippet.replace(
        'import { pipeline } from "@huggingface/transformers";',
        'import { env, pipeline } from "@huggingface/transformers";\n'
        "env.allowRemoteModels = false;\nenv.localModelPath = process.argv.at(-1);",
    )
    code += '\nconsole.log("OUT " + JSON.stringify(output[0].generated_text));\n'
    # --eval resolves the package from the working directory, where node_modules is.
    run = subprocess.run(
        ["node", "--input-type=module", "-e", code, str(models_root)], cwd=JS_ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(next(line for line in reversed(run.stdout.splitlines()) if line.startswith("OUT "))[4:])


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_card_snippet_generates_like_transformers(exported_dir, tiny_model_dir, tmp_path, model_type):
    import transformers

    layout = save_pretrained(exported_dir(model_type), tmp_path / REPO_ID, REPO_ID)
    got = _run_card_snippet(layout.card.text, tmp_path)
    prompt = re.search(r'await generator\("([^"]+)", \{ max_new_tokens: (\d+) \}\)', layout.card.text)
    reference = transformers.pipeline("text-generation", model=str(tiny_model_dir(model_type)))
    expected = reference(prompt.group(1), max_new_tokens=int(prompt.group(2)), do_sample=False)[0]["generated_text"]
    assert got == expected
    assert len(got) > len(prompt.group(1))
    record(model_type, "transformers_js")


def _printed(stdout: str, tag: str):
    return json.loads(next(line for line in stdout.splitlines() if line.startswith(f"{tag} "))[len(tag) + 1 :])


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_generate_token_ids_match_transformers_on_a_padded_batch(exported_dir, tiny_model_dir, tmp_path, model_type):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    save_pretrained(exported_dir(model_type), tmp_path / REPO_ID, REPO_ID)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir(model_type), padding_side="left")
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert inputs["attention_mask"][:, 0].tolist().count(0) == 2  # rows really are padded
    batch = json.dumps([inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()])
    code = IDS_SCRIPT.replace("NEW", str(NEW_TOKENS))
    run = subprocess.run(
        ["node", "--input-type=module", "-e", code, str(tmp_path), REPO_ID, json.dumps(PROMPTS), batch],
        cwd=JS_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # The tokenizer files we publish tokenize as transformers does, padding included.
    assert _printed(run.stdout, "TOKENS") == json.loads(batch)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir(model_type)).eval()
    with torch.no_grad():
        expected = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    got = _printed(run.stdout, "IDS")
    assert got == expected.tolist()
    assert len({t for row in got for t in row[-NEW_TOKENS:]}) > 2
