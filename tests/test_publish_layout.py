"""The Hub layout written by `save_pretrained`: files, bytes, configs, and that the graphs still load from it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from optimum_onnx23.errors import OutputFolderError, UnsafeModelFileError
from optimum_onnx23.publish import GenaiPrecisionError, find_onnx_models, plan_hub_layout, save_pretrained
from optimum_onnx23.publish.card import _size as _card_size

REPO_ID = "onnx-community-test/tiny-llama-onnx23"


@pytest.fixture(scope="module")
def export_folder(exported_dir) -> Path:
    return exported_dir("llama")


@pytest.fixture(scope="module")
def hub_folder(export_folder, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("hub") / "tiny-llama-onnx23"
    save_pretrained(export_folder, target, REPO_ID)
    return target


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_layout_onnx_under_onnx_and_configs_at_the_root(export_folder, hub_folder):
    flat = _files(export_folder)
    tokenizer_files = {f for f in flat if f.startswith("tokenizer") or f == "chat_template.jinja"}
    assert tokenizer_files >= {"tokenizer.json", "tokenizer_config.json"}
    assert _files(hub_folder) == {
        "README.md",
        "config.json",
        "generation_config.json",
        "export_report.json",
        "genai_config.json",
        "onnx/model.onnx",
        "onnx/model.onnx_data",
        *tokenizer_files,
    }
    for name in ("model.onnx", "model.onnx_data"):
        assert (hub_folder / "onnx" / name).read_bytes() == (export_folder / name).read_bytes()
    for name in ["generation_config.json", *tokenizer_files - {"tokenizer_config.json"}]:
        assert (hub_folder / name).read_bytes() == (export_folder / name).read_bytes()
    # The graph still finds its weights (transformers.js derives the same `<graph>_data` name).
    proto = onnx.load(str(hub_folder / "onnx" / "model.onnx"), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx_data"}


def test_config_declares_external_data_for_transformers_js(export_folder, hub_folder):
    original = json.loads((export_folder / "config.json").read_text())
    written = json.loads((hub_folder / "config.json").read_text())
    js_config = written.pop("transformers.js_config")
    assert written == original
    assert js_config == {"use_external_data_format": {"model.onnx": True}}


def test_tokenizer_config_states_the_bos_that_tokenizer_json_adds(export_folder, hub_folder):
    from transformers import AutoTokenizer

    original = json.loads((export_folder / "tokenizer_config.json").read_text())
    written = json.loads((hub_folder / "tokenizer_config.json").read_text())
    assert "add_bos_token" not in original  # transformers 5 keeps it in tokenizer.json only
    assert written == {**original, "add_bos_token": True}
    # transformers reads the written folder exactly as the exported one.
    text = "Hello, my name is"
    ids = AutoTokenizer.from_pretrained(hub_folder)(text).input_ids
    assert ids == AutoTokenizer.from_pretrained(export_folder)(text).input_ids
    assert ids[0] == json.loads((export_folder / "config.json").read_text())["bos_token_id"]


def test_export_report_keeps_figures_and_drops_local_paths(export_folder, hub_folder):
    original = json.loads((export_folder / "export_report.json").read_text())
    public = json.loads((hub_folder / "export_report.json").read_text())
    assert "output" not in public and str(export_folder) not in json.dumps(public)
    assert public["model"] == Path(original["model"]).name  # a local folder: its name only
    for key in ("versions", "fusions", "validation", "opset", "max_abs_diff"):
        assert public[key] == original[key]


def test_genai_config_describes_the_graph(export_folder, hub_folder):
    genai = json.loads((hub_folder / "genai_config.json").read_text())
    config = json.loads((export_folder / "config.json").read_text())
    generation = json.loads((export_folder / "generation_config.json").read_text())
    decoder = genai["model"]["decoder"]
    session = ort.InferenceSession(str(hub_folder / decoder["filename"]), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    layers = decoder["num_hidden_layers"]
    assert layers == config["num_hidden_layers"]
    for i in range(layers):
        assert decoder["inputs"]["past_key_names"] % i in inputs and decoder["inputs"]["past_value_names"] % i in inputs
        assert decoder["outputs"]["present_key_names"] % i in outputs and decoder["outputs"]["present_value_names"] % i in outputs
    assert {decoder["inputs"][k] for k in ("input_ids", "attention_mask", "position_ids")} <= set(inputs)
    past = session.get_inputs()[inputs.index("past_key_values.0.key")].shape
    assert [decoder["num_key_value_heads"], decoder["head_size"]] == past[1::2]
    assert decoder["num_attention_heads"] == config["num_attention_heads"]
    assert genai["model"]["eos_token_id"] == generation["eos_token_id"]
    assert genai["model"]["vocab_size"] == config["vocab_size"]
    assert genai["model"]["type"] == "llama"
    assert genai["search"]["past_present_share_buffer"] is False


def test_our_loader_reads_both_layouts_alike(export_folder, hub_folder):
    from optimum_onnx23.pipelines import ORTModelForCausalLM

    prompt = torch.tensor([[1, 45, 300, 12, 9]])
    flat = ORTModelForCausalLM.from_pretrained(export_folder).generate(prompt, max_new_tokens=8, do_sample=False)
    hub = ORTModelForCausalLM.from_pretrained(hub_folder).generate(prompt, max_new_tokens=8, do_sample=False)
    assert np.asarray(hub).shape[1] > prompt.shape[1]
    np.testing.assert_array_equal(np.asarray(hub), np.asarray(flat))


def test_a_hub_layout_folder_is_planned_as_it_is(hub_folder):
    layout = plan_hub_layout(hub_folder, REPO_ID)
    assert sorted(layout.paths) == sorted(_files(hub_folder))
    for f in layout.files:
        assert f.size == (hub_folder / f.path_in_repo).stat().st_size, f.path_in_repo
    assert layout["README.md"].content == (hub_folder / "README.md").read_bytes()
    assert layout["genai_config.json"].content == (hub_folder / "genai_config.json").read_bytes()


def test_save_pretrained_refuses_a_non_empty_folder(export_folder, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="exists and is not empty"):
        save_pretrained(export_folder, tmp_path)
    assert _files(tmp_path) == {"keep.txt"}


def test_variants_are_named_by_transformers_js_conventions(export_folder, tmp_path):
    folder = tmp_path / "with-variant"
    folder.mkdir()
    for p in export_folder.iterdir():
        shutil.copy2(p, folder / p.name)
    # A variant with its own external data, named like transformers.js' `dtype: "int8"` file (here the
    # main graph with one weight changed, so that its outputs tell the two files apart).
    proto = onnx.load(str(export_folder / "model.onnx"))
    weight = max(proto.graph.initializer, key=lambda t: onnx.numpy_helper.to_array(t).size)
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 0.5, weight.name))
    onnx.save_model(proto, str(folder / "model_int8.onnx"), save_as_external_data=True, location="model_int8.onnx_data")
    target = tmp_path / "hub"
    layout = save_pretrained(folder, target, REPO_ID)
    assert {"onnx/model_int8.onnx", "onnx/model_int8.onnx_data", "onnx/model.onnx"} <= _files(target)
    assert layout.variants == ["int8"]
    js_config = json.loads((target / "config.json").read_text())["transformers.js_config"]
    assert js_config["use_external_data_format"] == {"model.onnx": True, "model_int8.onnx": True}
    assert "int8" in layout.card.data.tags and "Attached variants: `int8`." in layout.card.text
    # genai_config.json stays on the main graph.
    assert json.loads((target / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "onnx/model.onnx"
    # Each published file is the graph and weights it was made from: same outputs, same values.
    def outputs(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ids = np.array([[1, 45, 300, 12, 9]], np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(5)[None]}
        for i in session.get_inputs()[3:]:
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        return [o.name for o in session.get_outputs()], session.run(None, feeds)

    main_names, main_values = outputs(export_folder / "model.onnx")
    for name in ("model.onnx", "model_int8.onnx"):
        names, values = outputs(target / "onnx" / name)
        want_names, want_values = outputs(folder / name)
        assert names == want_names == main_names
        assert all(np.array_equal(a, b) for a, b in zip(values, want_values)), name
    assert not np.array_equal(outputs(target / "onnx" / "model_int8.onnx")[1][0], main_values[0])


def test_external_data_outside_the_folder_is_refused(export_folder, tmp_path):
    proto = onnx.load(str(export_folder / "model.onnx"), load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.external_data)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = "../outside.bin"
    folder = tmp_path / "evil"
    folder.mkdir()
    onnx.save_model(proto, str(folder / "model.onnx"))
    with pytest.raises(UnsafeModelFileError, match=r"references external data `\.\./outside\.bin` outside its folder"):
        find_onnx_models(folder)


def test_attached_backend_variants_are_tagged_and_selection_caches_left_out(export_folder, tmp_path):
    from optimum_onnx23.variants import attach_builtin_variants, list_variants

    folder = tmp_path / "with-backend-variant"
    shutil.copytree(export_folder, folder)
    attach_builtin_variants(folder, ["ort-cpu"])
    attached = [v.name for v in list_variants(onnx.load(str(folder / "model.onnx"), load_external_data=False))]
    assert attached == ["ort-cpu"]
    # A selected-variant cache, as optimum_onnx23.variants writes it beside the model at session creation.
    shutil.copyfile(folder / "model.onnx", folder / "model.variant-ort-cpu.onnx")
    layout = plan_hub_layout(folder, REPO_ID)
    assert layout.variants == attached
    assert [p for p in layout.paths if p.endswith(".onnx")] == ["onnx/model.onnx"]
    assert "ort-cpu" in layout.card.data.tags and "Attached variants: `ort-cpu`." in layout.card.text


@pytest.mark.parametrize(
    "inputs, reason",
    [
        (("input_ids", "attention_mask", "position_ids"), "has no past_key_values inputs"),
        (
            ("input_ids", "attention_mask", "position_ids", "write_indices", "past_key_values.0.key", "past_key_values.0.value"),
            "has inputs onnxruntime-genai cannot feed (write_indices)",
        ),
    ],
)
def test_no_genai_config_for_graphs_genai_cannot_drive(export_folder, inputs, reason):
    from optimum_onnx23.publish import make_genai_config
    from optimum_onnx23.publish.genai_config import GenaiConfigError

    main = find_onnx_models(export_folder)[0]
    graph = type(main)(main.model, main.external_data, inputs, main.graph_outputs, main.opset)
    config = json.loads((export_folder / "config.json").read_text())
    with pytest.raises(GenaiConfigError, match=re.escape(reason)):
        make_genai_config(graph, "onnx/model.onnx", config)
    assert make_genai_config(main, "onnx/model.onnx", config)["model"]["decoder"]["filename"] == "onnx/model.onnx"


def test_genai_config_leaves_out_token_ids_the_model_does_not_have(export_folder, tmp_path):
    from optimum_onnx23.publish import make_genai_config

    config = {**json.loads((export_folder / "config.json").read_text()), "bos_token_id": None, "pad_token_id": None}
    genai = make_genai_config(find_onnx_models(export_folder)[0], "onnx/model.onnx", config, {"eos_token_id": [2, 5]})
    assert "bos_token_id" not in genai["model"]  # onnxruntime-genai refuses null
    assert genai["model"]["eos_token_id"] == [2, 5] and genai["model"]["pad_token_id"] == 2


@pytest.mark.parametrize(
    "model_type, cli_args, note",
    [
        ("llama", ("--task", "text-generation"), "has no past_key_values inputs"),
        ("gpt2", ("--cache", "static", "--max-cache-len", "48"), "has inputs onnxruntime-genai cannot feed (write_indices)"),
    ],
)
def test_exports_genai_cannot_run_get_no_genai_config(exported_dir, model_type, cli_args, note):
    layout = plan_hub_layout(exported_dir(model_type, *cli_args), REPO_ID)
    assert "genai_config.json" not in layout.paths and layout.genai_config is None
    assert [n for n in layout.notes if note in n]
    assert "onnxruntime-genai" not in layout.card.data.tags and "og.Model(" not in layout.card.text
    assert "onnx/model.onnx" in layout.paths


@pytest.fixture(scope="module")
def int4_export(exported_dir) -> Path:
    return exported_dir("llama", "--variant", "ort-cpu-int4")  # shared with test_model_file / test_generation_variants


@pytest.fixture(scope="module")
def int4_hub(int4_export, tmp_path_factory):
    target = tmp_path_factory.mktemp("hub-int4") / "tiny-llama-onnx23"
    return target, save_pretrained(int4_export, target, REPO_ID)


def test_int4_variant_is_materialized_as_transformers_js_q4(int4_export, int4_hub):
    target, layout = int4_hub
    assert {"onnx/model.onnx", "onnx/model.onnx_data", "onnx/model_q4.onnx", "onnx/model_q4.onnx_data", "onnx/manifest.json"} <= _files(target)
    # The main graph is published as exported: the variant stays inside it (the source of truth).
    for name in ("model.onnx", "model.onnx_data"):
        assert (target / "onnx" / name).read_bytes() == (int4_export / name).read_bytes()
    # What the plan (and the dry run) states is what was written, byte for byte.
    assert {f.path_in_repo: f.size for f in layout.files} == {p: (target / p).stat().st_size for p in _files(target)}
    js = json.loads((target / "config.json").read_text())["transformers.js_config"]["use_external_data_format"]
    assert js == {"model.onnx": True, "model_q4.onnx": True}
    assert [(p.precision, p.dtype, p.graph, p.variant) for p in layout.precisions] == [
        ("fp32", "fp32", "onnx/model.onnx", None), ("int4", "q4", "onnx/model_q4.onnx", "ort-cpu-int4")
    ]
    q4 = layout.precisions[1]
    assert q4.size == sum((target / p).stat().st_size for p in (q4.graph, *q4.data)) < layout.precisions[0].size
    # The card: the transformers.js snippet uses q4 and lists both dtypes with their sizes; genai's graph is named.
    snippet = re.search(r"```js\n(.*?)```", layout.card.text, re.S).group(1)
    assert '{ dtype: "q4" }' in snippet and f'"q4" (int4, {_card_size(q4.size)})' in snippet and '"fp32" (fp32, ' in snippet
    assert "`genai_config.json` runs `onnx/model_q4.onnx` (int4)" in layout.card.text
    assert f"| int4 | `q4` | `onnx/model_q4.onnx` | {_card_size(q4.size)} | backend variant `ort-cpu-int4` |" in layout.card.text
    assert json.loads((target / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "onnx/model_q4.onnx"
    assert "weights in `onnx/model.onnx_data`, `onnx/model_q4.onnx_data`." in layout.card.text


def test_model_package_maps_the_cpu_provider_to_int4_first(int4_hub):
    target, layout = int4_hub
    variants = layout.model_package["components"]["decoder"]["variants"]
    assert list(variants)[:3] == ["cpu-int4", "cpu-fp32", "cuda-fp32"]
    assert variants["cpu-int4"]["executor_info"]["ort"]["model_file"] == "model_q4.onnx"
    assert {v["executor_info"]["ort"]["model_file"] for k, v in variants.items() if k != "cpu-int4"} == {"model.onnx"}
    package = ort.ModelPackageContext(str(target / "onnx"))
    options = ort.SessionOptions()
    options.add_provider("CPUExecutionProvider", {})
    assert package.select_component("decoder", ort.ModelPackageOptions(options)).get_selected_variant_name() == "cpu-int4"


def test_genai_precision_is_the_publishers_choice(int4_export, int4_hub):
    _, auto = int4_hub
    assert auto.genai_precision.graph == "onnx/model_q4.onnx"
    main = plan_hub_layout(int4_export, REPO_ID, genai_precision="fp32")
    assert main.genai_config["model"]["decoder"]["filename"] == "onnx/model.onnx"
    assert "`genai_config.json` runs `onnx/model.onnx` (fp32)" in main.card.text
    with pytest.raises(GenaiPrecisionError) as raised:
        plan_hub_layout(int4_export, REPO_ID, genai_precision="int8")
    assert str(raised.value) == (
        "genai precision 'int8': the folder has no such graph (it has: fp32, int4); attach the variant first "
        "(`optimum-cli onnx23 variants attach FOLDER --variant ort-cpu-int4` for int4), or pass one of those or `auto`."
    )


def test_a_published_folder_republishes_as_it_is(int4_hub):
    target, layout = int4_hub
    again = plan_hub_layout(target, REPO_ID)
    assert sorted(again.paths) == sorted(layout.paths)
    # Nothing is materialized a second time: the q4 files are copied as they are, genai keeps its graph.
    assert all(f.writer is None for f in again.files)
    assert again.genai_precision.graph == "onnx/model_q4.onnx" and again["onnx/manifest.json"].source is not None
    from optimum_onnx23.pipelines import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(target)
    assert model.variant == "ort-cpu-int4"  # our sessions still select the in-file variant
