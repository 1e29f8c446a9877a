"""The real checkpoint (SmolLM2-135M-Instruct) with `ort-cpu-int8` and `ort-cpu-int4` attached, laid out
for the Hub: every consumer runs the variants, not the fp32 main graph.

- the files: `onnx/model_q4.onnx` / `model_int8.onnx`, each with its own data file holding exactly
  the tensors it reads: its own weights and the same shared fp32 tensors as the other (bytes on disk);
- transformers.js (`dtype: "q4"` and `"int8"`, one node process) and onnxruntime-genai, each given
  only the files its precision needs, generate our sessions' greedy tokens for the same variant
  (the same graph and onnxruntime's same MatMulNBits kernels; transformers.js bundles
  onnxruntime-node 1.30, we run 1.32);
- onnxruntime's model package (`onnx/manifest.json`) picks the int4 graph for the CPU provider;
- `from_pretrained` of the published folder still selects the in-file int4 variant.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from optimum_onnx23.pipelines import ORTModelForCausalLM
from optimum_onnx23.publish import save_pretrained
from optimum_onnx23.publish.card import _size
from optimum_onnx23.variants.runtime import create_session

pytestmark = [pytest.mark.real_checkpoint, pytest.mark.usefixtures("quiet_onnxruntime")]

REPO_ID = "onnx-community-test/smollm2-135m-onnx23"
PROMPT = "Gravity is the force by which a planet or other body draws objects toward its center. It"
NEW_TOKENS = 16
JS_ROOT = os.environ.get("OPTIMUM_ONNX23_TRANSFORMERS_JS", "")
HAS_JS = bool(shutil.which("node")) and (Path(JS_ROOT) / "node_modules" / "@huggingface" / "transformers").is_dir()
try:
    import onnxruntime_genai as og
except ImportError:
    og = None


@pytest.fixture(scope="module")
def published(real_variants_dir, module_tmp):
    folder, _ = real_variants_dir
    root = module_tmp / "published"
    root.mkdir()
    layout = save_pretrained(folder, root / REPO_ID, REPO_ID)
    return root / REPO_ID, layout


@pytest.fixture(scope="module")
def prompt_ids(published) -> list[int]:
    return AutoTokenizer.from_pretrained(published[0])(PROMPT).input_ids


def _ours(hub: Path, prompt: list[int], variant: str) -> tuple[list[int], str | None]:
    """Greedy ids of our ORTModelForCausalLM on the published onnx/model.onnx with `variant` selected."""
    session, chosen = create_session(hub / "onnx" / "model.onnx", ["CPUExecutionProvider"], variant=variant)
    model = ORTModelForCausalLM(session, AutoConfig.from_pretrained(hub), model_path=hub / "onnx" / "model.onnx")
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return np.asarray(out)[0].tolist(), chosen


@pytest.fixture(scope="module")
def our_ids(published, prompt_ids) -> dict[str, list[int]]:
    hub, _ = published
    got = {}
    for precision, variant in (("int4", "ort-cpu-int4"), ("int8", "ort-cpu-int8")):
        got[precision], chosen = _ours(hub, prompt_ids, variant)
        assert chosen == variant
    assert got["int4"] != got["int8"]  # two different graphs really ran
    return got


def _only(hub: Path, target: Path, graphs: list[str], extra: tuple[str, ...] = ()) -> Path:
    """A folder of symlinks to the published root files (`extra` too) and `onnx/<graph>` + its data
    only: a consumer that runs there needs no other graph."""
    (target / "onnx").mkdir(parents=True)
    for path in hub.iterdir():
        if path.is_file() and (path.suffix != ".json" or path.name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", *extra)):
            (target / path.name).symlink_to(path)
    for graph in graphs:
        for name in (graph, f"{graph}_data"):
            (target / "onnx" / name).symlink_to(hub / "onnx" / name)
    return target


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_each_variant_file_holds_only_what_it_reads(published, real_variants_dir):
    hub, layout = published
    _, report = real_variants_dir
    main_bytes = sum((hub / "onnx" / n).stat().st_size for n in ("model.onnx", "model.onnx_data"))
    sizes = {}
    for graph, variant, other in (("model_q4.onnx", "ort-cpu-int4", "ort-cpu-int8"), ("model_int8.onnx", "ort-cpu-int8", "ort-cpu-int4")):
        proto = onnx.load(str(hub / "onnx" / graph), load_external_data=False)
        assert not proto.functions  # a plain graph: no variant left inside
        assert {p.key: p.value for p in proto.metadata_props}["optimum_onnx23.selected_variant"] == variant
        ends, total = [], 0
        for tensor in proto.graph.initializer:
            assert not tensor.name.startswith(f"variants/{other}/")
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in tensor.external_data}
                assert info["location"] == f"{graph}_data"
                ends.append(int(info["offset"]) + int(info["length"]))
                total += int(info["length"])
        data = (hub / "onnx" / f"{graph}_data").stat().st_size
        # Every byte of the data file is a tensor the graph reads, or alignment padding (< 64 per tensor).
        assert data == max(ends) and data - total < 64 * len(ends)
        sizes[graph] = (hub / "onnx" / graph).stat().st_size + data
        precision = {"model_q4.onnx": "int4 | `q4`", "model_int8.onnx": "int8 | `int8`"}[graph]
        assert f"| {precision} | `onnx/{graph}` | {_size(sizes[graph])} |" in layout.card.text  # the precisions table
    # The q4 download (the fp32 embedding it gathers from, + the int4/int8 blocks) against the fp32
    # one of an export with only the int4 variant attached, as the issue measured it (645.6 MB: the
    # fp32 weights and, in the same data file, the int4 variant's): here the int8 variant's bytes
    # come off what this folder's fp32 download is.
    int8 = report["variants"]["ort-cpu-int8"]
    int4_export_bytes = main_bytes - int8["data_bytes_added"] - int8["graph_bytes_added"]
    print(f"q4 {sizes['model_q4.onnx']:,} B, int8 {sizes['model_int8.onnx']:,} B, fp32 {main_bytes:,} B "
          f"(int4-only export: {int4_export_bytes:,} B): q4 = {sizes['model_q4.onnx'] / int4_export_bytes:.1%}")
    # Each download is the variant's own tensors plus the same shared fp32 ones (the embedding it
    # gathers from, the norms): the two differ by their own bytes only (and their graphs' sizes).
    # What int4 weighs against fp32 is the measured precision's choice (--quant-budget: 70 of 121
    # groups int8 at the default, 35.8% of the int4-only export; the fixed list of earlier was
    # under 35%), so the bound is against the int8 download, not a fixed share.
    own = {graph: report["variants"][variant]["owned_bytes"] for graph, variant in (("model_q4.onnx", "ort-cpu-int4"), ("model_int8.onnx", "ort-cpu-int8"))}
    shared = {graph: sizes[graph] - own[graph] for graph in own}
    assert abs(shared["model_q4.onnx"] - shared["model_int8.onnx"]) < 1_000_000, (sizes, own)
    assert own["model_q4.onnx"] < 0.9 * own["model_int8.onnx"], own  # 124.3 MB against 151.3 at the default budget
    assert {p.dtype: p.size for p in layout.precisions} == {
        "fp32": main_bytes, "q4": sizes["model_q4.onnx"], "int8": sizes["model_int8.onnx"]
    }
    js = json.loads((hub / "config.json").read_text())["transformers.js_config"]["use_external_data_format"]
    assert js == {"model.onnx": True, "model_q4.onnx": True, "model_int8.onnx": True}


def test_the_published_q4_graph_is_our_int4_session(published, prompt_ids):
    hub, _ = published
    ids = np.array([prompt_ids], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    plain = ort.InferenceSession(str(hub / "onnx" / "model_q4.onnx"), providers=["CPUExecutionProvider"])
    for i in plain.get_inputs()[3:]:
        feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    ours, chosen = create_session(hub / "onnx" / "model.onnx", ["CPUExecutionProvider"])
    assert chosen == "ort-cpu-int4"
    np.testing.assert_array_equal(plain.run(["logits"], feeds)[0], ours.run(["logits"], feeds)[0])


def test_from_pretrained_selects_the_in_file_int4_variant(published, prompt_ids, our_ids, real_variants_dir):
    hub, _ = published
    model = ORTModelForCausalLM.from_pretrained(hub)
    assert model.variant == "ort-cpu-int4"
    ids = torch.tensor([prompt_ids])
    greedy = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    got = np.asarray(model.generate(ids, attention_mask=torch.ones_like(ids), **greedy))[0].tolist()
    assert got == our_ids["int4"]
    flat = ORTModelForCausalLM.from_pretrained(real_variants_dir[0])  # the export it was published from
    assert np.asarray(flat.generate(ids, attention_mask=torch.ones_like(ids), **greedy))[0].tolist() == got


JS_SCRIPT = """
import { env, AutoModelForCausalLM, Tensor } from "@huggingface/transformers";
env.allowRemoteModels = false;
env.localModelPath = process.argv.at(-4);
const repo = process.argv.at(-3), ids = JSON.parse(process.argv.at(-2)), dtypes = JSON.parse(process.argv.at(-1));
const out = {};
for (const dtype of dtypes) {
  const model = await AutoModelForCausalLM.from_pretrained(repo, { dtype });
  const tensor = (r) => new Tensor("int64", BigInt64Array.from(r.map(BigInt)), [1, r.length]);
  const seq = await model.generate({
    input_ids: tensor(ids), attention_mask: tensor(ids.map(() => 1)), max_new_tokens: NEW, min_new_tokens: NEW, do_sample: false,
  });
  out[dtype] = seq.tolist()[0].map(Number);
  await model.dispose();
}
console.log("IDS " + JSON.stringify(out));
"""


@pytest.mark.interop
@pytest.mark.skipif(not HAS_JS, reason="transformers.js is not installed: set OPTIMUM_ONNX23_TRANSFORMERS_JS (see tests/test_publish_transformers_js.py)")
def test_transformers_js_q4_and_int8_generate_our_variants_tokens(published, prompt_ids, our_ids, tmp_path):
    hub, _ = published
    # Only the q4 and int8 files (no model.onnx): transformers.js needs nothing else for these dtypes.
    _only(hub, tmp_path / REPO_ID, ["model_q4.onnx", "model_int8.onnx"])
    run = subprocess.run(
        ["node", "--input-type=module", "-e", JS_SCRIPT.replace("NEW", str(NEW_TOKENS)), str(tmp_path), REPO_ID,
         json.dumps(prompt_ids), json.dumps(["q4", "int8"])],
        cwd=JS_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("IDS "))[4:])
    for dtype, precision in (("q4", "int4"), ("int8", "int8")):
        agree = _first_difference(got[dtype], our_ids[precision]) - len(prompt_ids)
        print(f"transformers.js {dtype}: {agree}/{NEW_TOKENS} greedy tokens equal to ours")
        assert got[dtype] == our_ids[precision], f"{dtype}: first {agree} of {NEW_TOKENS} new tokens agree"


@pytest.mark.interop
@pytest.mark.skipif(og is None, reason="onnxruntime-genai is not installed (pip install onnxruntime-genai==0.18.0)")
def test_onnxruntime_genai_runs_the_int4_graph(published, prompt_ids, our_ids, tmp_path):
    hub, layout = published
    assert layout.genai_config["model"]["decoder"]["filename"] == "onnx/model_q4.onnx"
    assert "`genai_config.json` runs `onnx/model_q4.onnx` (int4)" in layout.card.text
    folder = _only(hub, tmp_path / "genai", ["model_q4.onnx"], extra=("genai_config.json",))
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    length = len(prompt_ids) + NEW_TOKENS
    params.set_search_options(do_sample=False, max_length=length, min_length=length)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt_ids, np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    got = [int(t) for t in generator.get_sequence(0)]
    agree = _first_difference(got, our_ids["int4"]) - len(prompt_ids)
    print(f"onnxruntime-genai int4: {agree}/{NEW_TOKENS} greedy tokens equal to ours")
    assert got == our_ids["int4"], f"first {agree} of {NEW_TOKENS} new tokens agree"


def test_onnxruntime_model_package_picks_int4_for_the_cpu_provider(published, prompt_ids):
    hub, layout = published
    package = ort.ModelPackageContext(str(hub / "onnx"))
    names = package.get_variant_names("decoder")
    assert names[:3] == ["cpu-int4", "cpu-int8", "cpu-fp32"]
    assert package.get_variant_ep_name("decoder", "cuda-fp32") == "CUDAExecutionProvider"
    options = ort.SessionOptions()
    options.add_provider("CPUExecutionProvider", {})
    decoder = package.select_component("decoder", ort.ModelPackageOptions(options))
    assert decoder.get_selected_variant_name() == "cpu-int4"
    session = decoder.create_session()
    assert session.get_modelmeta().custom_metadata_map["optimum_onnx23.selected_variant"] == "ort-cpu-int4"
    ids = np.array([prompt_ids], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for i in session.get_inputs()[3:]:
        feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    ours, _ = create_session(hub / "onnx" / "model.onnx", ["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(["logits"], feeds)[0], ours.run(["logits"], feeds)[0])
