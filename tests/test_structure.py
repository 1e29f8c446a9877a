"""The package's shape, read from the source alone (pure `ast`, no import): no import cycle between
its modules, no private name imported from another project module, and ruff's checks pass.

Modules are named as they install: `pipelines/` is `optimum_onnx23.pipelines`, `cli/` is
`optimum_onnx23.cli` (`cli/register/` is `optimum.commands.register`), `optimum_onnxruntime/` is
`optimum.onnxruntime`. Every import counts, function-level ones included (a lazy import hides a
cycle, it does not remove it); imports under `if TYPE_CHECKING:` do not (they never run).
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci

REPO = Path(__file__).resolve().parents[1]
# folder -> the dotted name it installs as
ROOTS = {
    "optimum_onnx23": "optimum_onnx23",
    "pipelines": "optimum_onnx23.pipelines",
    "cli/register": "optimum.commands.register",
    "cli": "optimum_onnx23.cli",
    "optimum_onnxruntime": "optimum.onnxruntime",
}
def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, dotted in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(REPO / folder).with_suffix("").parts
            if folder == "cli" and relative[:1] == ("register",):
                continue
            parts = relative[:-1] if relative[-1] == "__init__" else relative
            modules[".".join((dotted, *parts))] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported project module, the name taken from it or None, line) for every import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = name if _is_package(path) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target:
                    found.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source not in modules:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((source, alias.name, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _module_files()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        graph[name] |= {target for target, _, _ in _imports(name, path, modules) if target != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(tuple(sorted(component)))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def private_imports() -> list[str]:
    """`from X import _name` (or a private submodule) from outside the module or package that owns it."""
    modules = _module_files()
    found = []
    for name, path in modules.items():
        for target, imported, line in _imports(name, path, modules):
            if imported is not None:  # a name defined in `target`: private to that module
                private = imported.startswith("_") and not imported.startswith("__")
                owner = target
            else:  # a module: private to its package when its own name is
                private = any(part.startswith("_") and not part.startswith("__") for part in target.split(".")[1:])
                owner = target.rpartition(".")[0]
            if not private:
                continue
            inside = name == owner or name.startswith(owner + ".") if imported is None else name == owner
            if not inside:
                found.append(f"{path.relative_to(REPO)}:{line}: {target}{'.' + imported if imported else ''}")
    return found


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_import_between_modules():
    found = private_imports()
    assert not found, "private names imported across project modules:\n" + "\n".join(found)


def test_private_onnxscript_names_only_in_the_adapter():
    """onnxscript's private modules and names are imported by `optimum_onnx23/_onnxscript_compat.py` alone."""
    adapter = REPO / "optimum_onnx23" / "_onnxscript_compat.py"
    found = []
    for path in _module_files().values():
        if path == adapter:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("onnxscript"):
                names = [node.module, *(alias.name for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("onnxscript")]
            else:
                continue
            if any(part.startswith("_") for name in names for part in name.split(".")):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, "private onnxscript imports outside _onnxscript_compat.py:\n" + "\n".join(found)


def test_ruff_passes():
    if importlib.util.find_spec("ruff") is None:
        message = "ruff is not installed (pip install 'optimum-onnx23[test]')"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":  # python tests/test_structure.py: print what the tests check
    for cycle in find_cycles(import_graph()):
        print("cycle:", " <-> ".join(cycle))
    for line in private_imports():
        print("private:", line)
