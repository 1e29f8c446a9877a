"""The distribution ships every subpackage, under our namespace, and the optimum-cli plugin."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_folder():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapped = tool["package-dir"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "optimum_onnx23").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    # pipelines/ and cli/ ship inside our namespace, never as top-level `pipelines` / `cli`.
    assert mapped["optimum_onnx23.pipelines"] == "pipelines" and mapped["optimum_onnx23.cli"] == "cli"
    assert not {"pipelines", "cli"} & listed
    # optimum's plugin namespace must stay PEP 420 (optimum warns about, and may mis-import, an __init__.py).
    assert mapped["optimum.commands.register"] == "cli/register"
    assert not (REPO / "cli" / "register" / "__init__.py").exists()


def test_optimum_cli_finds_our_export_command():
    from optimum.commands.optimum_cli import load_optimum_namespace_cli_commands

    from optimum_onnx23.cli.export import ONNXExportCommand

    commands = [command for command, _ in load_optimum_namespace_cli_commands()]
    assert ONNXExportCommand in commands
