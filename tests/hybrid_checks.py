"""Checks shared by the hybrid-cache test files (tests/test_hybrid_*.py): one exported tiny model per
family, compared with transformers on the same weights.

The long prompt is 132 tokens: more than Qwen3.5's DeltaNet chunk (64, so its Scan runs 3 chunks)
and many Mamba chunks (4 in the tiny configs); the short one is 1 token, so in a batch it is padded
by 131 positions."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_onnx23.exporters.families.cache_layout import CACHE_LAYOUT_KEY
from optimum_onnx23.exporters.report import ExportReport
from optimum_onnx23.pipelines import ORTModelForCausalLM

LONG = (
    "The exporter writes one graph for prefill and decode; hybrid decoders keep a convolution window and a "
    "recurrent state for some layers and keys and values for the others, and every one of them must survive left padding. "
)
PROMPTS = ["ONNX is", LONG, "Hi"]
NEW_TOKENS = 8


def encode(folder, prompts):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True)


def reference_model(source):
    return AutoModelForCausalLM.from_pretrained(source).eval()


def check_export(folder, model_type: str) -> None:
    """Validated on the three shapes for every output (states included), only standard ops, the
    layout in the report, the ONNX metadata and config.json, states with static dims but the batch."""
    report = ExportReport.load(folder / "export_report.json")
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    outputs = [o.name for o in model.graph.output]
    assert any(n.startswith("present_") for n in outputs), outputs
    assert len(report.validation) == 3
    for shape, diffs in report.validation.items():
        assert sorted(diffs) == sorted(outputs), shape
        for name, diff in diffs.items():
            assert diff <= report.validation_allowed[shape][name], (shape, name, diff)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, "non-standard ops"
    layers = report.cache_layout["layers"]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata[CACHE_LAYOUT_KEY])["layers"] == layers
    config = json.loads((folder / "config.json").read_text())
    assert config[CACHE_LAYOUT_KEY]["layers"] == layers
    declared = {t["input"]: t["shape"] for layer in layers for t in layer["tensors"].values()}
    for value in model.graph.input:
        if value.name.startswith(("past_conv.", "past_ssm.", "past_recurrent.")):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert dims == declared[value.name], value.name
            assert dims[0] == "batch_size" and all(isinstance(d, int) for d in dims[1:]), dims
    assert report.model_type == model_type


def _transformers_state(layer, kind: str) -> torch.Tensor:
    if kind in ("key", "value"):
        return layer.keys if kind == "key" else layer.values
    if kind == "conv":
        return layer.conv_states[0][..., 1:]  # transformers keeps K positions; the first is never read
    return layer.recurrent_states[0]


def check_states_match_transformers(folder, source) -> None:
    """Prefill of a padded batch (132 and 3 tokens), then a 1-token and a 3-token step, through
    `forward()` against transformers' own forward and cache (its chunked prefill and its
    recurrent one-token path): logits at real positions and every cache tensor."""
    model = ORTModelForCausalLM.from_pretrained(folder)
    reference = reference_model(source)
    batch = encode(source, [LONG, "ONNX is"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = ref_cache = None
    steps = [ids, torch.tensor([[5], [9]]), torch.tensor([[11, 12, 13], [14, 15, 16]])]
    for step, step_ids in enumerate(steps):
        if step:
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
        with torch.no_grad():
            expected = reference(
                input_ids=step_ids, attention_mask=mask, position_ids=position_ids, cache=ref_cache, use_cache=True
            )
        got = model(step_ids, attention_mask=mask, position_ids=position_ids, cache=cache)
        real = mask[:, -step_ids.shape[1] :].bool()
        scale = float(expected.logits[real].abs().max())
        assert torch.allclose(got.logits[real], expected.logits[real], atol=2e-4 * max(scale, 1.0)), f"logits at step {step}"
        ref_cache, cache = expected.cache, got.cache
        for spec, tensor in zip(model.io.cache, cache):
            want = _transformers_state(ref_cache.layers[spec.layer], spec.kind)
            scale = max(float(want.abs().max()), 1.0)
            assert torch.allclose(tensor, want, atol=2e-4 * scale), f"{spec.present} at step {step}"


def check_generation(folder, source) -> None:
    """Greedy and beam-4 token ids equal to transformers at batch 1 and at a left-padded batch of 3."""
    reference = reference_model(source)
    model = ORTModelForCausalLM.from_pretrained(folder)
    single, batch = encode(source, PROMPTS[:1]), encode(source, PROMPTS)
    seen: set[int] = set()
    for name, kwargs in {
        "greedy": dict(max_new_tokens=NEW_TOKENS, do_sample=False),
        "beam": dict(max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=4, num_return_sequences=2),
    }.items():
        for inputs in (single, batch):
            expected = reference.generate(**inputs, **kwargs)
            got = model.generate(**inputs, **kwargs)
            label = f"{name} batch={inputs['input_ids'].shape[0]}"
            assert torch.equal(got, expected), f"{label}: {got.tolist()} != {expected.tolist()}"
            seen.update(got[:, -NEW_TOKENS:].flatten().tolist())
    assert len(seen) > 2, seen


def check_left_padding(folder, source) -> None:
    """A 1-token prompt padded by 131 positions next to the long one: its tokens are those it gets
    alone (unpadded), ours and transformers' alike, and the batch equals transformers' batch."""
    reference = reference_model(source)
    model = ORTModelForCausalLM.from_pretrained(folder)
    prompts = [LONG, "Hi"]
    batch = encode(source, prompts)
    assert int((batch["attention_mask"][1] == 0).sum()) > 100  # heavily padded
    kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=False)
    ours = model.generate(**batch, **kwargs)[:, -NEW_TOKENS:]
    theirs = reference.generate(**batch, **kwargs)[:, -NEW_TOKENS:]
    for row, prompt in enumerate(prompts):
        alone = encode(source, [prompt])
        assert torch.equal(ours[row], model.generate(**alone, **kwargs)[0, -NEW_TOKENS:]), f"row {row}: padding leaked into our state"
        assert torch.equal(theirs[row], reference.generate(**alone, **kwargs)[0, -NEW_TOKENS:]), f"row {row}: transformers' batch differs"
    assert torch.equal(ours, theirs)


def check_sampling(folder, source) -> None:
    """Sampling reproduces under a seed, really samples, and equals transformers under the same seed."""
    reference = reference_model(source)
    model = ORTModelForCausalLM.from_pretrained(folder)
    inputs = encode(source, PROMPTS)
    kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=True, temperature=1.5, top_k=50)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(model.generate(**inputs, **kwargs))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    torch.manual_seed(7)
    assert torch.equal(reference.generate(**inputs, **kwargs), runs[0])


def state_buffers(model: ORTModelForCausalLM, prompt_ids: np.ndarray, steps: int = 3) -> list[list[int]]:
    """Per step, the device addresses of the state values the cache holds after it."""
    state = model.new_state(prompt_ids.shape[0])
    state.step(prompt_ids)
    addresses = []
    for _ in range(steps):
        state.step(np.full((prompt_ids.shape[0], 1), 5, np.int64))
        addresses.append(
            [v.data_ptr() for spec, v in zip(model.io.cache, state.cache.values) if spec.is_state]
        )
    return addresses


def check_transformers_js(folder, source, tmp_path, prompt: str = "Hello world, this is a test", new_tokens: int = 16) -> None:
    """The Hub layout of `folder` through transformers.js' text-generation pipeline (node), greedy:
    the same text as transformers' pipeline on the PyTorch weights. Skips without node / the package."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    import pytest
    import transformers

    from optimum_onnx23.publish import save_pretrained

    js_root = os.environ.get("OPTIMUM_ONNX23_TRANSFORMERS_JS", "")
    if not shutil.which("node") or not (Path(js_root) / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip("transformers.js is not installed (OPTIMUM_ONNX23_TRANSFORMERS_JS, needs node)")
    save_pretrained(folder, tmp_path / "onnx-community-test" / "hybrid", "onnx-community-test/hybrid")
    code = (
        'import { env, pipeline } from "@huggingface/transformers";\n'
        "env.allowRemoteModels = false; env.localModelPath = process.argv.at(-1);\n"
        'const generator = await pipeline("text-generation", "onnx-community-test/hybrid", { dtype: "fp32" });\n'
        f"const output = await generator({json.dumps(prompt)}, {{ max_new_tokens: {new_tokens}, min_new_tokens: {new_tokens}, do_sample: false }});\n"
        'console.log("OUT " + JSON.stringify(output[0].generated_text));\n'
    )
    run = subprocess.run(["node", "--input-type=module", "-e", code, str(tmp_path)], cwd=js_root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(next(line for line in reversed(run.stdout.splitlines()) if line.startswith("OUT "))[4:])
    reference = transformers.pipeline("text-generation", model=str(source))
    expected = reference(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)[0]["generated_text"]
    assert got == expected and len(got) > len(prompt)
