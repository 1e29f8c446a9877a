"""Bad input to the exporter: one line on stderr naming the problem, a non-zero exit, nothing written."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from conftest import run_optimum_cli
from graph_bugs import BUGS
from tiny_models import BUNDLED


def cli_error(capsys, *argv) -> tuple[int, str]:
    code = run_optimum_cli("export", "onnx", *argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((name, f".{name}")))


def test_unknown_architecture_lists_supported_ones(tmp_path, capsys):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    code, line = cli_error(capsys, "--dynamo", "--model", model, tmp_path / "out")
    assert code == 1
    # the CLI's progress handler (bound to this call's stderr, a capture stream here) leaves with it
    assert logging.getLogger("optimum_onnx23").handlers == []
    assert line.startswith("error: Architecture `bert` is not supported")
    assert "encoder" in line and "nearest supported one is `gpt2`" in line
    for supported in ("gemma2", "gpt2", "llama", "smollm3"):
        assert supported in line
    assert not (tmp_path / "out").exists()


def test_every_transformers_text_decoder_is_supported_or_explained():
    """Each model type of transformers' AutoModelForCausalLM mapping either exports or is refused
    with a reason and the nearest supported type; a new transformers release with new types fails
    here until they are triaged."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from optimum_onnx23.exporters.families import EXPORT_CONFIGS, nearest_supported
    from optimum_onnx23.exporters.families.unsupported import NOT_SUPPORTED

    untriaged = sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - set(EXPORT_CONFIGS) - set(NOT_SUPPORTED))
    assert not untriaged, f"model types neither exported nor explained: {untriaged}"
    both = sorted(set(EXPORT_CONFIGS) & set(NOT_SUPPORTED))
    assert not both, f"registered and refused at once: {both}"
    for model_type, (nearest, reason) in NOT_SUPPORTED.items():
        assert reason and nearest_supported(model_type) in EXPORT_CONFIGS, model_type
        # A refusal names what is missing (a layer kind, an op, a check that failed), not a to-do.
        assert not re.search(r"without an entry|provisional|not tried|\byet\b", reason), f"{model_type}: {reason}"



def test_torch_export_failure_is_one_line_naming_module_and_operation(tmp_path, capsys):
    """A config with inconsistent head counts (3 kv heads for 4 query heads) fails inside torch.export:
    one line naming the module, the operation and the cause, no traceback; --verbose adds the trace."""
    import torch
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = tiny_config("llama")
    config.num_key_value_heads = 3
    source = tmp_path / "llama-kv3"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(source)
    AutoTokenizer.from_pretrained(BUNDLED).save_pretrained(source)
    for verbose in (False, True):
        code = run_optimum_cli("export", "onnx", "--dynamo", "--model", source, tmp_path / "out", *(["--verbose"] if verbose else []))
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert code == 1
        assert line.startswith("error: torch.export failed on `llama` in `model.layers.0.self_attn` (LlamaAttention) at "), line
        assert "scaled_dot_product_attention" in line and "length 3" in line and "--verbose" in line
        assert ("Traceback (most recent call last)" in err) == verbose, err[-2000:]
        assert "TorchExportError" not in line and leftovers(tmp_path, "out") == []


def test_missing_model_folder(tmp_path, capsys):
    code, line = cli_error(capsys, "--dynamo", "--model", tmp_path / "nope", tmp_path / "out")
    assert code == 1 and "does not exist" in line and str(tmp_path / "nope") in line


def test_folder_without_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, line = cli_error(capsys, "--dynamo", "--model", tmp_path / "empty", tmp_path / "out")
    assert code == 1 and "has no config.json" in line


def test_hub_id_not_in_offline_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, line = cli_error(capsys, "--dynamo", "--model", "no-such-org/no-such-model", "--cache-dir", tmp_path, tmp_path / "out")
    assert code == 1 and "no-such-org/no-such-model" in line and "HF cache" in line


@pytest.mark.parametrize("opset", ["17", "99"])
def test_opset_out_of_range(tmp_path, capsys, opset):
    code, line = cli_error(capsys, "--dynamo", "--opset", opset, "--model", BUNDLED, tmp_path / "out")
    assert code == 1 and f"Opset {opset} is out of range" in line and "--opset between 18 and" in line


def test_unknown_task(tmp_path, capsys):
    code, line = cli_error(capsys, "--dynamo", "--task", "fill-mask", "--model", BUNDLED, tmp_path / "out")
    assert code == 1 and "Unknown task `fill-mask`" in line and "text-generation-with-past" in line


def test_without_dynamo_and_without_optimum_onnx(tmp_path, capsys):
    code, line = cli_error(capsys, "--model", BUNDLED, tmp_path / "out")
    assert code == 2 and "pass --dynamo" in line
    assert not (tmp_path / "out").exists()


def test_non_empty_output_refused_then_a_previous_export_replaced_with_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, line = cli_error(capsys, "--dynamo", "--model", BUNDLED, out)
    assert code == 1 and "exists and is not empty" in line and "keep.txt" in line
    assert (out / "keep.txt").read_text() == "user data"
    code, line = cli_error(capsys, "--dynamo", "--overwrite", "--model", BUNDLED, out)  # not ours: kept
    assert code == 1 and "keep.txt" in line and "not an optimum-onnx23 export" in line
    assert (out / "keep.txt").read_text() == "user data"

    (out / "keep.txt").unlink()
    (out / "export_report.json").write_text(json.dumps({"model": "an earlier one", "opset": 23}))
    (out / "model.onnx").write_bytes(b"stale")
    code, line = cli_error(capsys, "--dynamo", "--model", BUNDLED, out)
    assert code == 1 and "previous optimum-onnx23 export" in line and "--overwrite" in line
    assert run_optimum_cli("export", "onnx", "--dynamo", "--overwrite", "--model", BUNDLED, out) == 0
    assert (out / "model.onnx").read_bytes() != b"stale"
    assert json.loads((out / "export_report.json").read_text())["model"] == str(BUNDLED)
    assert leftovers(tmp_path, "out") == ["out"]


def test_failed_validation_leaves_nothing_behind(tmp_path, capsys):
    code, line = cli_error(capsys, "--dynamo", "--atol", "1e-12", "--rtol", "0", "--model", BUNDLED, tmp_path / "out")
    assert code == 1
    assert line.startswith("error: ONNX outputs differ from PyTorch beyond atol=1e-12, rtol=0") and "Nothing was written" in line
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_broken_graph_fails_default_validation(bug, tmp_path, capsys, monkeypatch):
    """A step slipped in after the fusions breaks the graph; the default tolerance refuses it."""
    from optimum_onnx23.exporters import steps
    from optimum_onnx23.exporters.pipeline import ExportStep

    at = [step.name for step in steps.STEPS].index("fuse") + 1
    broken = ExportStep(bug, lambda ctx: BUGS[bug](ctx.onnx_model.graph), lambda ctx: bug)
    monkeypatch.setattr(steps, "STEPS", [*steps.STEPS[:at], broken, *steps.STEPS[at:]])
    code, line = cli_error(capsys, "--dynamo", "--model", BUNDLED, tmp_path / "out")
    assert code == 1
    assert line.startswith("error: ONNX outputs differ from PyTorch beyond atol=0.0001, rtol=0.0001") and "logits" in line
    assert leftovers(tmp_path, "out") == []


def _copy_bundled(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(BUNDLED, folder)
    return folder


def _not_safetensors(folder: Path) -> str:
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 123\n")
    return f"{folder / 'model.safetensors'} is not a safetensors file"


def _truncated(folder: Path) -> str:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"{path} is truncated: {len(data) // 2} bytes where its header describes {len(data)}"


def _missing_shard(folder: Path) -> str:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    (folder / "model.safetensors").unlink()
    save_file({n: tensors[n] for n in names[:3]}, folder / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    weight_map = {n: ("model-00001-of-00002.safetensors" if i < 3 else "model-00002-of-00002.safetensors") for i, n in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return f"{folder} is missing weight shard model-00002-of-00002.safetensors named by model.safetensors.index.json"


@pytest.mark.parametrize("corrupt", [_not_safetensors, _truncated, _missing_shard], ids=lambda f: f.__name__.strip("_"))
def test_corrupt_weights_get_one_line_naming_the_file(corrupt, tmp_path, capsys):
    folder = _copy_bundled(tmp_path)
    expected = corrupt(folder)
    code, line = cli_error(capsys, "--dynamo", "--model", folder, tmp_path / "out")
    assert code == 1
    assert line.startswith(f"error: {expected}"), line
    assert leftovers(tmp_path, "out") == []


def test_gguf_file_that_is_not_gguf(tmp_path, capsys):
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"PK\x03\x04 a zip archive, not llama.cpp")
    code, line = cli_error(capsys, "--dynamo", "--model", folder, "--gguf-file", "model.gguf", tmp_path / "out")
    assert code == 1
    assert line == f"error: {folder / 'model.gguf'} is not a GGUF file (it does not start with `GGUF`); pass a llama.cpp .gguf file."
    code, line = cli_error(capsys, "--dynamo", "--model", folder, tmp_path / "out")
    assert code == 1 and line.endswith("it has no config.json; to export its GGUF file pass --gguf-file model.gguf.")
    assert leftovers(tmp_path, "out") == []


def test_default_export_warns_nothing_from_our_calls(tmp_path, caplog):
    """No FutureWarning/DeprecationWarning (e.g. transformers 5's `past_key_values` -> `cache`) and
    no deprecation line in transformers' log during a default export."""
    import logging
    import warnings

    from optimum_onnx23.exporters import export

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        export(BUNDLED, tmp_path / "out")
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert deprecations == []
    assert [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()] == []


def test_interrupted_export_leaves_existing_output_untouched(tmp_path, monkeypatch):
    from optimum_onnx23 import fusions
    from optimum_onnx23.exporters import export

    out = tmp_path / "out"
    out.mkdir()
    (out / "export_report.json").write_text(json.dumps({"model": "previous export", "opset": 23}))

    def interrupt(model):
        raise KeyboardInterrupt

    monkeypatch.setattr(fusions, "fuse", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(BUNDLED, out, overwrite=True)
    assert leftovers(tmp_path, "out") == ["out"]
    assert [p.name for p in out.iterdir()] == ["export_report.json"]
    assert json.loads((out / "export_report.json").read_text())["model"] == "previous export"


def test_export_from_hub_cache_offline(tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1 (no network)."""
    from optimum_onnx23.exporters import export

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for source in BUNDLED.iterdir():
        blob = repo / "blobs" / f"blob-{source.name}"
        shutil.copy(source, blob)
        (snapshot / source.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    report = export("tiny-org/tiny-llama", tmp_path / "out", cache_dir=str(cache))
    assert report.model == "tiny-org/tiny-llama" and report.max_abs_diff <= 1e-4
    assert (tmp_path / "out" / "tokenizer.json").is_file()

    from optimum_onnx23.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="tiny-org/tiny-llama"):
        export("tiny-org/tiny-llama", tmp_path / "out2", cache_dir=str(cache), revision="no-such-branch")
    assert not (tmp_path / "out2").exists()


# ---- a failure in the last steps leaves nothing behind ------------------------------------------
# Each failure is injected where the bytes are written, through seams that do not depend on how
# exporters/convert.py orders its steps: the variants package's attach function, transformers'
# tokenizer save_pretrained (what exporters.tokenizer.save_tokenizer calls), and the rename that
# moves the staged folder into place (exporters/output.py).


def _fail_after(original, error):
    def failing(*args, **kwargs):
        original(*args, **kwargs)  # do the real work (files land in the staging folder), then fail
        raise error

    return failing


def _export_fails_cleanly(tmp_path, overwrite: bool, error_type, **export_kwargs):
    from optimum_onnx23.exporters import export

    out = tmp_path / "out"
    if overwrite:
        out.mkdir()
        (out / "keep.txt").write_text("previous export")
    with pytest.raises(error_type):
        export(BUNDLED, out, overwrite=overwrite, **export_kwargs)
    if overwrite:
        assert leftovers(tmp_path, "out") == ["out"]
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "previous export"
    else:
        assert leftovers(tmp_path, "out") == []


def test_failure_while_attaching_a_variant_leaves_nothing_behind(tmp_path, monkeypatch):
    import optimum_onnx23.variants as variants

    attach = _fail_after(variants.attach_builtin_variants, OSError(28, "No space left on device"))
    monkeypatch.setattr(variants, "attach_builtin_variants", attach)
    _export_fails_cleanly(tmp_path, False, OSError, variants=["ort-cpu-int8"])


def test_failure_while_saving_the_tokenizer_leaves_nothing_behind(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    save = _fail_after(PreTrainedTokenizerBase.save_pretrained, OSError(28, "No space left on device"))
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", save)
    _export_fails_cleanly(tmp_path, False, OSError)


def _failing_final_rename(monkeypatch, output_name: str):
    original = Path.rename

    def rename(self, target):
        if self.name.startswith(f".{output_name}.partial-") and Path(target).name == output_name:
            raise OSError(5, "Input/output error")
        return original(self, target)

    monkeypatch.setattr(Path, "rename", rename)


def test_failure_while_moving_the_export_into_place_keeps_the_previous_folder(tmp_path, monkeypatch):
    _failing_final_rename(monkeypatch, "out")
    _export_fails_cleanly(tmp_path, True, OSError)


@pytest.mark.parametrize("existing", [False, True])
def test_staged_output_folder_restores_on_a_failed_move(tmp_path, monkeypatch, existing):
    from optimum_onnx23.exporters.output import staged_output_folder

    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("previous export")
    _failing_final_rename(monkeypatch, "out")
    with pytest.raises(OSError, match="Input/output error"):
        with staged_output_folder(out) as staging:
            (staging / "model.onnx").write_bytes(b"new")
    assert leftovers(tmp_path, "out") == (["out"] if existing else [])
    if existing:
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
