"""optimum's own entry points on transformers 5: `optimum.pipelines.pipeline(..., accelerator="ort")`
and `from optimum.onnxruntime import ORTModelForCausalLM` (from_pretrained(export=True),
save_pretrained, optimum-onnx's documented examples), answered by the `optimum.onnxruntime` this
package ships into optimum's namespace.

The entry-point tests run where users run them: in a venv with this repo's wheel installed (a
regular install, not the editable one the suite runs from), compared with transformers here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import pipeline as transformers_pipeline

from optimum_onnx23.errors import InvalidArgumentError, NotCoveredError
from optimum_onnx23.pipelines import ORTModelForCausalLM, ORTTextGenerationPipeline, export_cache

# The transformers references decode token by token: on a busy 2-core machine torch's second
# OpenMP thread makes each step ~10x slower (measured: 17 s vs 1.6 s for 11 SmolLM2 tokens). Only
# around the references: the exports keep torch's default threads (their validation is compared
# against PyTorch run that way).
from optimum_onnx23.pipelines.generation import single_threaded_torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "compat" / "optimum_entry_points.py"
PROMPT = "He never went out without a book under his arm"
CHAT = [{"role": "user", "content": "What is ONNX?"}]
GREEDY = dict(max_new_tokens=16, do_sample=False)


def _run(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)


# ---- a regular install, from the wheel ---------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """This repo's wheel, built (no network, no build isolation) from a copy of its package folders."""
    work = tmp_path_factory.mktemp("wheel")
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"optimum_onnx23", *(path.split("/")[0] for path in tool["package-dir"].values())}
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in folders:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", work / "dist", src)
    assert build.returncode == 0, build.stderr[-3000:]
    (built,) = (work / "dist").glob("optimum_onnx23-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_python(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (--no-deps) over this venv's packages, which a .pth
    file adds after the venv's own site-packages. Only plain paths are added, so this venv's editable
    finder (a .pth *import*) is not loaded there: `optimum.onnxruntime` comes from the wheel."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_optimum_onnx23_test_base.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def test_wheel_ships_optimum_onnxruntime_into_optimums_namespace(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"optimum/onnxruntime/__init__.py", "optimum/onnxruntime/pipelines.py", "optimum/onnxruntime/modeling_decoder.py"} <= names
    assert "optimum/commands/register/optimum_onnx23.py" in names
    # optimum 2.x keeps `optimum` and `optimum.commands` as namespace packages: an __init__.py would shadow optimum.
    assert not {"optimum/__init__.py", "optimum/commands/__init__.py", "optimum/commands/register/__init__.py"} & names


@pytest.fixture(scope="module")
def entry_points(wheel_python, exported_dir, real_exported_dir, tmp_path_factory):
    """Runs tests/compat/optimum_entry_points.py in the wheel venv once; its results and stderr."""
    from tiny_models import BUNDLED

    work = tmp_path_factory.mktemp("entry-points")
    result = work / "result.json"
    run = _run(
        wheel_python, SCRIPT, exported_dir("bundled"), BUNDLED, work, result, real_exported_dir(),
        cwd=work, env=_clean_env(OPTIMUM_ONNX23_EXPORT_CACHE=str(work / "export-cache")), timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(result.read_text()), run.stderr, work


@pytest.fixture(scope="module")
def transformers_tiny():
    from tiny_models import BUNDLED

    tokenizer = AutoTokenizer.from_pretrained(BUNDLED)
    model = AutoModelForCausalLM.from_pretrained(BUNDLED)
    pipe = transformers_pipeline("text-generation", model=model, tokenizer=tokenizer)
    pipe.tokenizer.padding_side = "left"
    return model, tokenizer, pipe


def test_modules_come_from_the_wheel(entry_points):
    results, _, _ = entry_points
    for module, path in results["modules"].items():
        assert "site-packages" in path and not path.startswith(str(REPO)), f"{module} imported from {path}, not the wheel"


def test_optimum_pipeline_accelerator_ort_gives_transformers_greedy_text(entry_points, transformers_tiny):
    results, _, _ = entry_points
    _, _, theirs = transformers_tiny
    assert results["pipeline_class"][:2] == ["ORTTextGenerationPipeline", "TextGenerationPipeline"]
    with single_threaded_torch():
        assert results["pipeline"] == theirs(PROMPT, **GREEDY)
        assert results["pipeline_batch"] == theirs([PROMPT, "ONNX is"], max_new_tokens=12, do_sample=False, batch_size=2)


@pytest.fixture(scope="module")
def transformers_real(real_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(real_checkpoint)
    return AutoModelForCausalLM.from_pretrained(real_checkpoint), tokenizer


@pytest.mark.real_checkpoint
def test_optimum_pipeline_on_the_real_checkpoint(entry_points, transformers_real):
    results, _, _ = entry_points
    theirs = transformers_pipeline("text-generation", model=transformers_real[0], tokenizer=transformers_real[1])
    with single_threaded_torch():
        assert results["real_pipeline"] == theirs(CHAT, max_new_tokens=24, do_sample=False)


def test_accelerator_none_is_optimums_own_message(entry_points):
    # optimum 2.3 auto-detects `ort` only when the optimum-onnx distribution is installed (its
    # metadata, not the module): nothing of ours runs before this message. README says: pass "ort".
    results, _, _ = entry_points
    assert results["accelerator_none"].startswith("You need to install either `optimum-onnx[onnxruntime]`")


def test_export_true_gives_transformers_ids_and_exports_once(entry_points, transformers_tiny):
    results, stderr, work = entry_points
    model, tokenizer, _ = transformers_tiny
    with single_threaded_torch():
        expected = model.generate(**tokenizer([PROMPT], return_tensors="pt"), **GREEDY).tolist()
    assert results["export_ids"] == expected
    assert results["export_again_ids"] == expected
    first, second = results["export_folders"]
    assert first == second and Path(first).parent == work / "export-cache"
    assert results["export_calls_first"] == [first]  # exported once, into the cache folder
    assert results["export_calls_second"] == [first]  # the second call did not export again
    assert results["export_onnx_unchanged"]
    # the user sees the export's steps the first time and the reuse the second time
    first_call, second_call = stderr.split("@@ first from_pretrained(export=True)")[1].split("@@ second from_pretrained(export=True)")
    assert "Exporting " in first_call and "[1/" in first_call
    assert "Using the ONNX export of" in second_call and "[1/" not in second_call


def test_save_pretrained_round_trip(entry_points, transformers_tiny):
    results, _, _ = entry_points
    model, tokenizer, _ = transformers_tiny
    assert results["saved_files"] == ["config.json", "export_report.json", "generation_config.json", "model.onnx", "model.onnx_data"]
    with single_threaded_torch():
        expected = model.generate(**tokenizer([PROMPT], return_tensors="pt"), **GREEDY).tolist()
    assert results["reloaded_ids"] == expected


def test_optimum_onnx_readme_example_runs_unchanged(entry_points, transformers_tiny):
    """README / usage guide of optimum-onnx 0.1.0: ORTModelForCausalLM into transformers' pipeline.
    transformers 5's pipeline samples by default: both runs use torch.manual_seed(0)."""
    results, _, _ = entry_points
    _, _, theirs = transformers_tiny
    with single_threaded_torch():
        torch.manual_seed(0)
        assert results["readme_example"] == theirs(PROMPT)


@pytest.mark.real_checkpoint
def test_optimum_onnx_docstring_example_runs_unchanged(entry_points, transformers_real):
    """ORTModelForCausalLM's docstring example (sampling, temperature 0.9, max_length 20)."""
    results, _, _ = entry_points
    model, tokenizer = transformers_real
    inputs = tokenizer("My name is Arthur and I live in", return_tensors="pt")
    with single_threaded_torch():
        torch.manual_seed(0)
        expected = model.generate(**inputs, do_sample=True, temperature=0.9, min_length=20, max_length=20)
    assert results["docstring_example"] == expected.tolist()


def test_other_optimum_onnx_names_say_what_to_use(entry_points):
    results, _, _ = entry_points
    for statement in (
        "from optimum.onnxruntime import ORTModelForSequenceClassification",
        "from optimum.onnxruntime import ORTQuantizer",
        "from optimum.onnxruntime.configuration import AutoQuantizationConfig",
    ):
        message = results[statement]
        assert message is not None, f"{statement} did not raise"
        assert "\n" not in message and "text-generation decoders on transformers 5" in message
        assert "optimum-onnx in an environment with transformers < 4.58" in message


def test_real_optimum_onnx_installed_is_not_shadowed(wheel_python, tmp_path):
    """With optimum-onnx's distribution present (its metadata is enough), importing our module fails in one line."""
    fake = tmp_path / "site"
    (fake / "optimum_onnx-0.1.0.dist-info").mkdir(parents=True)
    (fake / "optimum_onnx-0.1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: optimum-onnx\nVersion: 0.1.0\n")
    run = _run(wheel_python, "-c", "import optimum.onnxruntime", cwd=tmp_path, env=_clean_env(PYTHONPATH=str(fake)))
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("optimum_onnx23.errors.ConflictingDistributionError: optimum-onnx 0.1.0 is installed")
    assert "pip uninstall optimum-onnx" in last
    # without it, the same import works in that venv
    assert _run(wheel_python, "-c", "import optimum.onnxruntime", cwd=tmp_path, env=_clean_env()).returncode == 0


# ---- the same module in this (editable) venv: arguments and errors -----------------------------
def test_names_and_errors_in_process(exported_dir):
    import optimum.onnxruntime as ort_namespace
    from optimum.onnxruntime import ORTModelForCausalLM as Namespaced
    from optimum.onnxruntime import pipeline

    assert Namespaced is ORTModelForCausalLM
    assert {"ORTModelForCausalLM", "pipeline"} <= set(dir(ort_namespace))
    with pytest.raises(NotCoveredError, match="text-generation decoders"):
        from optimum.onnxruntime import ORTModelForSeq2SeqLM  # noqa: F401
    with pytest.raises(AttributeError):
        ort_namespace.not_a_name  # noqa: B018
    folder = exported_dir("bundled")
    with pytest.raises(InvalidArgumentError, match="^Task `summarization` is not covered"):
        pipeline("summarization", model=folder)
    with pytest.raises(InvalidArgumentError, match="^feature_extractor= has no use"):
        pipeline("text-generation", model=folder, feature_extractor="x")
    with pytest.raises(InvalidArgumentError, match="^torch_dtype=torch.float16: the ONNX export fixes the dtype"):
        pipeline("text-generation", model=folder, torch_dtype=torch.float16)
    with pytest.raises(InvalidArgumentError, match="device='mps' has no onnxruntime provider"):
        pipeline("text-generation", model=folder, device="mps")
    with pytest.raises(InvalidArgumentError, match="not both"):
        pipeline(model=folder, device="cpu", model_kwargs={"provider": "CPUExecutionProvider"})
    pipe = pipeline(model=folder, device=-1)
    assert isinstance(pipe, ORTTextGenerationPipeline) and pipe.model.provider == "CPUExecutionProvider"

    class Custom(ORTTextGenerationPipeline):
        pass

    assert type(pipeline(model=pipe.model, tokenizer=pipe.tokenizer, device="cpu", pipeline_class=Custom)) is Custom
    with pytest.raises(InvalidArgumentError, match="loaded already"):
        pipeline(model=pipe.model, model_kwargs={"provider": "CPUExecutionProvider"})
    with pytest.raises(InvalidArgumentError, match="Cannot move this onnxruntime session"):
        pipe.model.to("cuda")


def test_from_pretrained_arguments(exported_dir):
    folder = exported_dir("bundled")
    with pytest.raises(InvalidArgumentError, match="^Unknown from_pretrained\\(\\) argument\\(s\\): use_merged;"):
        ORTModelForCausalLM.from_pretrained(folder, use_merged=True)
    with pytest.raises(InvalidArgumentError, match="runs in fp32, not torch.float16"):
        ORTModelForCausalLM.from_pretrained(folder, dtype=torch.float16)
    with pytest.raises(InvalidArgumentError, match="2 provider_options for 1 providers"):
        ORTModelForCausalLM.from_pretrained(folder, provider_options=[{}, {}])
    model = ORTModelForCausalLM.from_pretrained(
        folder, providers=["CPUExecutionProvider"], provider_options={}, use_cache=False, use_io_binding=False, dtype=torch.float32
    )
    assert model.providers == ["CPUExecutionProvider"] and model.model_save_dir == folder and model.use_io_binding is False
    ids = torch.tensor([[1, 346, 227, 84]])
    without_cache = model(ids)
    assert without_cache.cache is None  # use_cache=False: config.use_cache, as in optimum-onnx
    with_cache = ORTModelForCausalLM.from_pretrained(folder)(ids)
    assert with_cache.cache is not None and torch.equal(with_cache.logits, without_cache.logits)


def test_save_pretrained_keeps_a_tokenizer_saved_first_and_push_to_hub_dry_run(exported_dir, tmp_path, capsys):
    from tiny_models import BUNDLED

    model = ORTModelForCausalLM.from_pretrained(exported_dir("bundled"))
    target = tmp_path / "saved"
    AutoTokenizer.from_pretrained(BUNDLED).save_pretrained(target)  # optimum-onnx's quickstart order, reversed
    model.save_pretrained(target)
    assert {"tokenizer.json", "model.onnx", "model.onnx_data", "config.json", "generation_config.json"} <= set(os.listdir(target))
    assert (target / "model.onnx_data").read_bytes() == (exported_dir("bundled") / "model.onnx_data").read_bytes()
    model.save_pretrained(target)  # again over itself: files replaced, nothing lost
    reloaded = ORTModelForCausalLM.from_pretrained(target)
    ids = torch.tensor([[1, 346, 227, 84]])
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert model.push_to_hub(target, "acme/tiny-onnx", dry_run=True) is None
    printed = capsys.readouterr().out
    assert "onnx/model.onnx" in printed and "onnx/model.onnx_data" in printed and "acme/tiny-onnx" in printed


def test_export_cache_key_follows_content(tmp_path, monkeypatch):
    """Same checkpoint and options: same folder. Any weight byte, the dtype or the Hub commit: another one."""
    from tiny_models import BUNDLED

    monkeypatch.setenv(export_cache.EXPORT_CACHE_ENV, str(tmp_path / "cache"))
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(BUNDLED, checkpoint)
    entry = export_cache.cache_entry(checkpoint)
    assert entry.folder.parent == tmp_path / "cache" and entry.source == str(checkpoint) and not entry.complete
    assert export_cache.cache_entry(checkpoint).folder == entry.folder
    (checkpoint / "README.md").write_text("notes do not change the export")
    assert export_cache.cache_entry(checkpoint).folder == entry.folder
    assert export_cache.cache_entry(checkpoint, dtype="fp16").folder != entry.folder
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert export_cache.cache_entry(checkpoint).folder != entry.folder

    # a Hub id is keyed by the snapshot's commit (here an offline HF cache made by hand)
    hub = tmp_path / "hub"
    for commit in ("a" * 40, "b" * 40):
        snapshot = hub / "models--acme--tiny" / "snapshots" / commit
        snapshot.mkdir(parents=True)
        shutil.copy(BUNDLED / "config.json", snapshot / "config.json")
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    main = export_cache.cache_entry("acme/tiny", cache_dir=hub, local_files_only=True)
    pinned = export_cache.cache_entry("acme/tiny", cache_dir=hub, local_files_only=True, revision="b" * 40)
    assert main.source == "acme/tiny" and main.revision == "a" * 40 and pinned.revision == "b" * 40
    assert main.folder != pinned.folder and main.folder.name.startswith("acme--tiny-")
    with pytest.raises(InvalidArgumentError, match="cannot be exported"):
        export_cache.export_dtype("int8")
