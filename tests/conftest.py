"""Shared fixtures: tiny models and their exports, built once per test session.

With pytest-xdist each worker is a separate process; the folders live under the session's shared
base temp dir and are guarded by file locks, so an export is done once for the whole run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

# Before anything imports huggingface_hub, which reads these once at import time. Set, not
# defaulted: a caller's shell exporting HF_HUB_OFFLINE=0 must not let the suite reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import ARCHITECTURES, BUNDLED, save_tiny_hybrid_model, save_tiny_model  # noqa: E402

INTEROP = "interop"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"{INTEROP}: runs a consumer (optimum-onnx, transformers.js, onnxruntime-genai) in the environment "
        "scripts/test.sh builds; under CI=true a skip of such a test is a failure",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true, an interop test that skips (its consumer environment is missing) fails:
    scripts/test.sh builds those environments, so a skip there means the build broke."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and item.get_closest_marker(INTEROP) is not None and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"interop test skipped under CI=true (scripts/test.sh builds its environment): {reason}"


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory) -> Path:
    """A folder shared by all xdist workers of this run."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def _variant_cache(shared_tmp):
    """Selected variant graphs are cached under the run's temp folder, not in ~/.cache."""
    os.environ.setdefault("OPTIMUM_ONNX23_CACHE", str(shared_tmp / "optimum-onnx23-cache"))


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Path:
    """A folder for one test module's big outputs (real-checkpoint copies, published folders),
    removed when the module ends: CI machines can be short of disk, and the suite's peak use is
    what the shared exports hold plus at most one such folder per xdist worker."""
    import shutil

    path = tmp_path_factory.mktemp("module")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(shared_tmp):
    """tiny_model_dir(model_type) -> folder with a seeded random model and the bundled tokenizer."""

    def make(model_type: str) -> Path:
        return save_tiny_model(model_type, shared_tmp / f"model-{model_type}")

    return make


def run_optimum_cli(*argv: str) -> int:
    """Run `optimum-cli ARGV` in this process (the real entry point, plugin registration included)."""
    from optimum.commands.optimum_cli import main

    old = sys.argv
    sys.argv = ["optimum-cli", *map(str, argv)]
    try:
        main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = old
    return 0


def _export_once(shared_tmp: Path, label: str, source: Path, cli_args: tuple[str, ...]) -> Path:
    """`optimum-cli export onnx --dynamo --model SOURCE *CLI_ARGS`, once per run for all xdist workers.

    What the command printed on stdout is kept beside the folder (`export_stdout`): whichever
    test triggered the export, every test reads the same text."""
    key = hashlib.sha1(json.dumps(cli_args).encode()).hexdigest()[:8]
    out = shared_tmp / f"onnx-{label}-{key}"
    with FileLock(str(out) + ".lock"):
        if not (out / "export_report.json").exists():
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = run_optimum_cli("export", "onnx", "--dynamo", "--model", source, *cli_args, out)
            Path(str(out) + ".stdout").write_text(printed.getvalue())
            assert code == 0, f"export of {label} {cli_args} failed with exit code {code}"
    return out


def export_stdout(folder: Path) -> str:
    """What `optimum-cli export onnx` printed on stdout when `exported_dir` made `folder`."""
    return Path(str(folder) + ".stdout").read_text()


@pytest.fixture(scope="session")
def exported_dir(shared_tmp, tiny_model_dir):
    """exported_dir(model_type, *extra_cli_args) -> folder made by `optimum-cli export onnx --dynamo`.

    Exported once per run and shared by all tests. `model_type="bundled"` exports the committed
    tiny Llama checkpoint.
    """

    def make(model_type: str, *cli_args: str) -> Path:
        source = BUNDLED if model_type == "bundled" else tiny_model_dir(model_type)
        return _export_once(shared_tmp, model_type, source, cli_args)

    return make


@pytest.fixture(scope="session")
def real_checkpoint() -> Path:
    """The HF folder of the real SmolLM2-135M-Instruct (scripts/real_checkpoint.py; test.sh prepares
    it). Missing, it is prepared here; it never skips: the real-checkpoint tier is part of the suite."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import real_checkpoint as script

    folder = Path(os.environ.get("OPTIMUM_ONNX23_REAL_CHECKPOINT_DIR", script.DEFAULT_CACHE / "hf"))
    with FileLock(str(script.DEFAULT_CACHE) + ".lock"):
        if not (folder / script.DONE).is_file():
            folder = script.prepare()
    return folder


@pytest.fixture(scope="session")
def real_gguf(real_checkpoint) -> Path:
    """The GGUF file the real checkpoint was converted from."""
    import real_checkpoint as script

    return real_checkpoint.parent / "gguf" / script.GGUF_NAME


@pytest.fixture(scope="session")
def real_exported_dir(shared_tmp, real_checkpoint):
    """real_exported_dir(*extra_cli_args) -> the real checkpoint exported once per run (default flags
    when none are given)."""

    def make(*cli_args: str) -> Path:
        return _export_once(shared_tmp, "smollm2", real_checkpoint, cli_args)

    return make


@pytest.fixture(scope="session")
def real_gemma3() -> Path:
    """The HF folder of the second real checkpoint, Gemma-3-270M (scripts/real_checkpoint.py
    --checkpoint gemma3; test.sh prepares it): another family, a 262k vocabulary, sliding windows.
    Missing, it is prepared here; it never skips."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import real_checkpoint as script

    spec = script.CHECKPOINTS["gemma3"]
    folder = Path(os.environ.get("OPTIMUM_ONNX23_REAL_CHECKPOINT_GEMMA3_DIR", spec.hf_dir))
    with FileLock(str(spec.cache) + ".lock"):
        if not (folder / script.DONE).is_file():
            folder = script.prepare(checkpoint="gemma3")
    return folder


@pytest.fixture(scope="module")
def real_gemma3_variants_dir(shared_tmp, real_gemma3) -> Iterator[tuple[Path, dict]]:
    """(folder, attach report): Gemma-3-270M exported with default flags and `int8` + `int4`
    attached, once per run for all xdist workers (the export and int4's measured precision are the
    tier's slowest steps: shared by every Gemma test)."""
    import shutil

    from optimum_onnx23.variants import attach_builtin_variants

    # labelled apart from the tiny gemma3 family's export (exported_dir("gemma3")): same flags, same key
    folder = _export_once(shared_tmp, "real-gemma3", real_gemma3, ())
    report_path = Path(str(folder) + ".variants.json")
    with FileLock(str(folder) + ".variants.lock"):
        if not report_path.is_file():
            report_path.write_text(json.dumps(attach_builtin_variants(folder, ["int8", "int4"])))
    yield folder, json.loads(report_path.read_text())
    # 1.7 GB (export + int8 + int4) read by tests/test_real_gemma3.py alone: removed when that
    # module ends (CI disks are small)
    shutil.rmtree(folder, ignore_errors=True)
    report_path.unlink(missing_ok=True)


REAL_VARIANTS = ["ort-cpu-int8", "ort-cpu-int4", "portable-opset21"]


@pytest.fixture(scope="session")
def real_variants_dir(shared_tmp, real_exported_dir) -> tuple[Path, dict]:
    """(folder, attach report): a copy of the real export with REAL_VARIANTS attached (and the
    portable forms of int8 and int4 they imply), once per run for all xdist workers: int4's
    calibrated scale search alone takes about a minute."""
    import shutil

    from optimum_onnx23.variants import attach_builtin_variants

    folder = shared_tmp / "real-variants" / "smollm2"
    report_path = folder.parent / "attach_report.json"
    with FileLock(str(folder.parent) + ".lock"):
        if not report_path.is_file():
            shutil.rmtree(folder.parent, ignore_errors=True)
            shutil.copytree(real_exported_dir(), folder)
            report_path.write_text(json.dumps(attach_builtin_variants(folder, REAL_VARIANTS)))
    return folder, json.loads(report_path.read_text())


@pytest.fixture(params=ARCHITECTURES)
def model_type(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def quiet_onnxruntime():
    """For variant tests: variant-unaware sessions log each variant-owned initializer they drop.
    onnxruntime's default logger is process-wide: restore its default (2, warnings) afterwards so
    later test files still see warnings."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    yield
    ort.set_default_logger_severity(2)


# Hybrid decoders (tests/test_hybrid_*.py): tiny seeded models and their default exports, once per run.
@pytest.fixture(scope="session")
def hybrid_model_dir(shared_tmp):
    return lambda model_type: save_tiny_hybrid_model(model_type, shared_tmp / f"hybrid-model-{model_type}")


@pytest.fixture(scope="session")
def hybrid_exported_dir(shared_tmp, hybrid_model_dir):
    return lambda model_type, *cli: _export_once(shared_tmp, f"hybrid-{model_type}", hybrid_model_dir(model_type), cli)


if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    import onnxruntime as _ort

    class _OneThreadSessionOptions(_ort.SessionOptions):
        """Under xdist the workers already share the cores: an onnxruntime session per worker with
        its default thread per core spins beside the other worker's (measured on 19 export and
        generate tests, 2 workers on 2 cores: 99 s with one intra-op thread, 125 s with the default).
        Sessions given options that set `intra_op_num_threads` keep theirs."""

        def __init__(self):
            super().__init__()
            self.intra_op_num_threads = 1

    _ort.SessionOptions = _OneThreadSessionOptions
