"""What a new user meets first (issue 21): file modes kept, --overwrite that never deletes what is
not ours, Ctrl-C in one line, argument errors before the heavy imports, a quiet CLI, messages that
speak the CLI's language, and the README's Generate code run as written. Tiny model only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BUNDLED, run_optimum_cli

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "optimum.commands.optimum_cli"]
CLI_IMPORTTIME = [sys.executable, "-X", "importtime", "-m", "optimum.commands.optimum_cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": ""}
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "onnx_ir", "onnxscript", "numpy")


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """`optimum-cli export onnx --dynamo --overwrite` in a subprocess, over a folder that holds a
    previous export of ours (a stand-in report and a stale model.onnx): (folder, stderr)."""
    out = tmp_path_factory.mktemp("cli") / "out"
    out.mkdir()
    (out / "export_report.json").write_text(json.dumps({"model": "an earlier model", "opset": 23}))
    (out / "model.onnx").write_bytes(b"stale")
    done = subprocess.run([*CLI, "export", "onnx", "--dynamo", "--overwrite", "-m", str(BUNDLED), str(out)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stderr


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


# --- file modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_attach_and_strip_keep_the_mode_of_model_onnx(cli_export, tmp_path, mode):
    from optimum_onnx23.variants import attach_builtin_variants
    from optimum_onnx23.variants.folder import strip_folder

    folder = _copy(cli_export[0], tmp_path / "m")
    for name in ("model.onnx", "model.onnx_data"):
        os.chmod(folder / name, mode)
    attach_builtin_variants(folder, ["ort-cpu"])
    assert _mode(folder / "model.onnx") == mode and _mode(folder / "model.onnx_data") == mode
    assert strip_folder(folder / "model.onnx") == ["ort-cpu"]
    assert _mode(folder / "model.onnx") == mode and _mode(folder / "model.onnx_data") == mode
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_new_file_written_through_replacing_gets_the_umask(tmp_path):
    from optimum_onnx23.files import replacing

    old = os.umask(0o027)
    try:
        with replacing(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.bin") == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["new.bin"]


# --- --overwrite and the demo's folder ---------------------------------------------------------


def test_overwrite_replaces_a_previous_export(cli_export):
    out, _ = cli_export
    assert (out / "model.onnx").read_bytes() != b"stale"
    assert json.loads((out / "export_report.json").read_text())["model"] == str(BUNDLED)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging or previous folder left


def test_overwrite_refuses_a_folder_that_is_not_an_export(tmp_path):
    from optimum_onnx23.errors import OutputFolderError
    from optimum_onnx23.exporters import export

    out = tmp_path / "out"
    out.mkdir()
    for name in ("notes.txt", "a.txt", "b.txt", "c.txt"):
        (out / name).write_text(name)
    (out / "export_report.json").write_text("[not our report]")  # a file of that name is not enough
    with pytest.raises(OutputFolderError) as caught:
        export(BUNDLED, out, overwrite=True)
    line = str(caught.value)
    assert "\n" not in line and "a.txt, b.txt and 3 other entries" in line and "not an optimum-onnx23 export" in line
    assert "choose an empty folder or remove them" in line
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "c.txt", "export_report.json", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_demo_replaces_only_a_previous_demo_export(tmp_path, capsys):
    from optimum_onnx23 import demo

    out = tmp_path / "somedir"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert demo.main(["--output", str(out), "--overwrite"]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "not a previous demo export" in line and "files that are not an optimum-onnx23 export" in line
    (out / "notes.txt").unlink()
    (out / "export_report.json").write_text(json.dumps({"model": "someone/else", "opset": 23}))
    assert demo.main(["--output", str(out), "--overwrite"]) == 1
    assert "holds an export of someone/else, not a previous demo export" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json"]
    # a demo export made from another clone of the repository is the demo's own
    (out / "export_report.json").write_text(json.dumps({"model": "/elsewhere/optimum_onnx23/data/tiny-llama", "opset": 23}))
    assert demo._is_demo_export(out, str(demo.BUNDLED_MODEL))


# --- Ctrl-C, argument errors, quiet ------------------------------------------------------------


@pytest.mark.parametrize("sent, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_kill_during_an_export_is_one_line_and_leaves_nothing(tmp_path, sent, code, word):
    out = tmp_path / "out"
    # As from a terminal: SIGINT at its default disposition in the child. An xdist worker may run
    # with SIGINT ignored, which a child inherits, and Python then installs no KeyboardInterrupt.
    process = subprocess.Popen([*CLI, "export", "onnx", "--dynamo", "-m", str(BUNDLED), str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in process.stderr:  # interrupt inside torch.export (step 2 takes ~7 s on the tiny model)
        lines.append(line)
        if line.startswith("[2/"):
            time.sleep(1.0)
            process.send_signal(sent)
            break
    stdout, rest = process.communicate(timeout=120)
    lines += rest.splitlines(True)
    assert process.returncode == code, "".join(lines)[-3000:]
    assert lines[-1].strip() == f"{word}; nothing was written"
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in lines)
    # steps 1 and 2 only, with their indented details (step 1's memory estimate)
    assert all(line.startswith(("[1/", "[2/", "  ")) for line in lines[:-1]), lines
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its .out.partial-* sibling


def test_an_interrupt_python_dropped_inside_a_step_still_stops_the_export_before_the_next_one():
    import types

    from optimum_onnx23 import interrupts
    from optimum_onnx23.exporters.pipeline import ExportStep, run_steps

    ran = []

    def dropping(ctx):  # as Python does with a KeyboardInterrupt raised in a weakref callback
        ran.append("first")
        try:
            interrupts._handler(signal.SIGINT, None)
        except KeyboardInterrupt:
            pass

    steps = [ExportStep("a", dropping, lambda ctx: "a"), ExportStep("b", lambda ctx: ran.append("second"), lambda ctx: "b")]
    ctx = types.SimpleNamespace(report=types.SimpleNamespace(timings={}))
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        run_steps(ctx, steps)
    assert ran == ["first"]
    run_steps(ctx, steps[1:])  # the record ends with the block: a later export runs
    assert ran == ["first", "second"]


@pytest.mark.parametrize("argv, expected", [
    (["--opset", "12"], "Opset 12 is out of range"),
    (["--dry-run"], "--dry-run only applies to an upload"),
    (["--cache", "static"], "--cache static needs --max-cache-len"),
    (["--variant", "ort-gpu"], "Unknown variant ort-gpu"),
    (["--push-to-hub", "a//b"], "Invalid Hub repo id"),
])
def test_argument_errors_are_answered_before_the_heavy_imports(tmp_path, argv, expected):
    """Refused in one line, without importing torch, transformers or onnx (they took 3.5-5 s before
    the line came). -X importtime lists every module the process imported; the 1 s bound is the
    issue's, about 8x what it takes here (0.1-0.15 s), and onnx alone takes ~1 s to import."""
    start = time.perf_counter()
    done = subprocess.run([*CLI_IMPORTTIME, "export", "onnx", "--dynamo", *argv, "-m", str(BUNDLED), str(tmp_path / "out")],
                          capture_output=True, text=True, env=ENV, timeout=60)
    seconds = time.perf_counter() - start
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 1 and len(said) == 1 and said[0].startswith("error: ") and expected in said[0], said
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert seconds < 1.0, seconds
    assert not (tmp_path / "out").exists()


def test_the_export_cli_is_quiet_by_default(cli_export):
    _, stderr = cli_export
    lines = stderr.splitlines()
    assert "Loading weights" not in stderr
    assert lines[0].startswith("[1/") and lines[-1].startswith("Exported ")
    assert all(line.startswith(("[", "  ", "Exported ")) for line in lines), [l for l in lines if not l.startswith(("[", "  "))]


# --- messages ----------------------------------------------------------------------------------


def test_attaching_twice_from_the_cli_names_the_cli_flag(cli_export, tmp_path, capsys):
    folder = _copy(cli_export[0], tmp_path / "m")
    assert run_optimum_cli("onnx23", "variants", "attach", folder, "--variant", "ort-cpu") == 0
    capsys.readouterr()
    assert run_optimum_cli("onnx23", "variants", "attach", folder, "--variant", "ort-cpu") == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "already carries variant ort-cpu; pass --replace" in line and "replace=True" not in line
    assert run_optimum_cli("onnx23", "variants", "attach", folder, "--variant", "ort-cpu", "--replace") == 0
    assert capsys.readouterr().out.startswith("attached ort-cpu:")
    assert run_optimum_cli("onnx23", "variants", "list", folder, "--json") == 0
    assert [v["name"] for v in json.loads(capsys.readouterr().out)] == ["ort-cpu"]


def test_a_missing_relative_folder_says_so_whole(tmp_path, monkeypatch):
    from optimum_onnx23.errors import ModelNotFoundError
    from optimum_onnx23.pipelines.hub import resolve_model_files

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError) as caught:  # README's old `model="demo-output"` from another directory
        resolve_model_files("demo-output", cache_dir=tmp_path / "hub")
    line = str(caught.value)
    assert line.startswith(f"No local folder demo-output (from {tmp_path}) and not a Hub id that can be reached: ")
    assert "\n" not in line and line.endswith("when offline (HF_HUB_OFFLINE=1).") and len(line) > 300  # nothing cut
    with pytest.raises(ModelNotFoundError, match=r"Model folder \./demo-output does not exist \(from "):
        resolve_model_files("./demo-output")


def test_save_pretrained_returns_a_short_repr(cli_export, tmp_path):
    from optimum_onnx23.publish import save_pretrained

    layout = save_pretrained(cli_export[0], tmp_path / "hub", repo_id="me/tiny")
    text = repr(layout)
    assert text.startswith("HubLayout('me/tiny': ") and " files, " in text and len(text) < 120, text
    assert len(str(layout.card)) > 1000  # what the old repr printed in full


# --- the demo and the README's Generate code ---------------------------------------------------


def _readme_generate_blocks() -> list[str]:
    """The ```python blocks of README.md's `## Generate` section (up to its next heading)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Generate\n", 1)[1]
    section = section.split("\n#", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```python\n")[1:]]
    assert blocks, "README.md's Generate section has no python block"
    return blocks


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`python -m optimum_onnx23.demo --output <tmp>/demo-output --overwrite`, what scripts/demo.sh runs."""
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    done = subprocess.run([sys.executable, "-m", "optimum_onnx23.demo", "--output", str(out), "--overwrite"],
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path_factory.mktemp("cwd"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return out, done.stdout, done.stderr


def test_the_demo_prints_its_folder_and_exported_once(demo_run):
    out, stdout, stderr = demo_run
    printed = stdout + stderr
    assert printed.count("Exported ") == 1 and "Loading weights" not in printed
    assert f"model folder: {out}\n" in stdout and "greedy text identical to transformers: yes" in stdout


def test_the_readme_generate_code_runs_as_written_from_another_directory(demo_run, tmp_path, monkeypatch):
    """Each block runs unchanged; the one substitution: `optimum_onnx23.demo.DEMO_OUTPUT` (which the
    README imports for the demo's folder) points at this test's demo export instead of <repo>/demo-output."""
    import optimum_onnx23.demo

    monkeypatch.setattr(optimum_onnx23.demo, "DEMO_OUTPUT", demo_run[0])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for block in _readme_generate_blocks():
        exec(compile(block, "README.md (Generate)", "exec"), namespace)
    assert namespace["pipe"]("ONNX is", max_new_tokens=24)[0]["generated_text"].startswith("ONNX is")
    assert namespace["out"].logits.shape[0] == 2 and namespace["longer_mask"].shape[1] == namespace["mask"].shape[1] + 1


def test_the_demo_default_folder_is_in_the_repository():
    from optimum_onnx23.demo import DEMO_OUTPUT

    assert DEMO_OUTPUT == ROOT / "demo-output"
    assert "$ROOT/demo-output" in (ROOT / "scripts" / "demo.sh").read_text()


# --- set-up and packaging ----------------------------------------------------------------------

_STUB_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "--version" ]; then echo "Python 3.11 (stub)"; exit 0; fi
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0.venv-python" "$3/bin/python"; exit 0; fi
exit 1
"""
_STUB_VENV_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$PIP_LOG"
case "$*" in
  *"torch==2.13.0+cpu"*--extra-index-url*) exit 0 ;;
  *"torch==2.13.0+cpu"*) [ "$NO_LOCAL_WHEEL" = 1 ] && exit 1 || exit 0 ;;
esac
exit 0
"""


@pytest.mark.parametrize("local_wheel", [True, False])
def test_env_sh_installs_the_cpu_torch_and_keeps_its_stamp(tmp_path, local_wheel):
    """scripts/env.sh with python3.11 and the venv's pip stubbed (nothing installed or downloaded):
    the CPU build from what pip already finds, PyTorch's CPU index only when that fails, never a
    plain `torch==2.13.0` on Linux; a second run finds its stamp and installs nothing."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "python3.11").write_text(_STUB_PYTHON)
    (stubs / "python3.11.venv-python").write_text(_STUB_VENV_PYTHON)
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "OPTIMUM_ONNX23_VENV": str(tmp_path / "venv"),
           "PIP_LOG": str(log), "NO_LOCAL_WHEEL": "0" if local_wheel else "1"}
    for _ in range(2):
        done = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/env.sh"'], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    torch_calls = [call for call in calls if "torch" in call]
    expected = ["-m pip install -q torch==2.13.0+cpu"]
    if not local_wheel:
        expected.append("-m pip install -q torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu")
    assert torch_calls == expected
    assert calls[-1] == f"-m pip install -q -e {ROOT}[test]" and len(calls) == len(expected) + 2  # once: the stamp
    assert len(list((tmp_path / "venv").glob(".installed-*"))) == 1


def test_pyproject_ships_the_data_without_a_packaging_warning():
    """setuptools warns ("Package 'optimum_onnx23.data' is absent from the `packages` configuration",
    40 lines) for a folder of shipped files whose dotted name Python could import and that `packages`
    does not list; and data/quality/ (calibration and evaluation texts) was left out of the wheel."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, package_data = set(tool["packages"]), tool["package-data"]
    data = ROOT / "optimum_onnx23" / "data"
    for path in (p for p in data.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        parts = path.relative_to(ROOT).parts[:-1]
        owner = next(".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in packages)
        rest = Path(*path.relative_to(ROOT).parts[len(owner.split(".")):])
        assert any(rest.match(glob) for glob in package_data.get(owner, [])), f"{path} is not in package-data"
        for n in range(len(owner.split(".")), len(parts) + 1):
            if all(part.isidentifier() for part in parts[:n]):
                assert ".".join(parts[:n]) in packages, f"add {'.'.join(parts[:n])} to packages"


def test_the_torch_free_argument_tables_match_the_exporter():
    from optimum_onnx23 import arguments
    from optimum_onnx23.cli.variants import BUILTIN_NAMES
    from optimum_onnx23.exporters import TASKS, max_opset
    from optimum_onnx23.exporters.steps import DTYPES
    from optimum_onnx23.variants.producers import BUILTIN

    assert arguments.TASK_NAMES == tuple(TASKS) and arguments.DTYPE_NAMES == tuple(DTYPES)
    assert arguments.VARIANT_NAMES == tuple(BUILTIN) == BUILTIN_NAMES
    assert max_opset() >= arguments._KNOWN_BY_EVERY_ONNX
