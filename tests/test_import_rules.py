"""The import rules between the top-level packages (docs/architecture.md), read from the source.

`models` (the science core) imports neither `app` nor `workers`; `app` never imports `workers`; the
client distribution (`app/client/memaudit_client`) imports only the standard library, httpx and
itself. Every module's AST is walked, so imports inside functions count, and so do
``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "app" / "client" / "memaudit_client"


def _modules(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.py") if ".venv" not in path.parts)


def _package_of(path: Path, root: Path) -> list[str]:
    return list(path.relative_to(root).with_suffix("").parts[:-1])


def imported_names(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted module name) of every import in the file, wherever it appears."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                package = _package_of(path, root)
                module = ".".join([*package[: len(package) - node.level + 1], *([module] if module else [])])
            yield node.lineno, module
            for alias in node.names:  # `from package import submodule`
                yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _violations(files: list[Path], root: Path, forbidden: set[str]) -> list[str]:
    found = []
    for path in files:
        for line, name in imported_names(path, root):
            if name.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


def test_models_imports_neither_app_nor_workers() -> None:
    files = _modules(REPO / "models")
    assert files
    assert _violations(files, REPO, {"app", "workers", "memaudit_client"}) == []


def test_app_never_imports_workers() -> None:
    files = [path for path in _modules(REPO / "app") if CLIENT not in path.parents]
    assert len(files) > 30
    assert _violations(files, REPO, {"workers"}) == []


def test_the_client_imports_only_the_standard_library_and_httpx() -> None:
    allowed = set(sys.stdlib_module_names) | {"httpx", "memaudit_client", "__future__"}
    found = []
    for path in _modules(CLIENT):
        for line, name in imported_names(path, CLIENT.parent):
            if name.split(".")[0] not in allowed:
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert found == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from workers.tasks import run_unit\n", "workers.tasks"),
        ("import importlib\nimportlib.import_module('workers.runner')\n", "workers.runner"),
        ("from . import sibling\n", "app.api.sibling"),
        ("from .. import db\n", "app.db"),
    ],
)
def test_the_rule_sees_function_level_dynamic_and_relative_imports(
    tmp_path: Path, source: str, expected: str
) -> None:
    module = tmp_path / "app" / "api" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    assert expected in {name for _, name in imported_names(module, tmp_path)}


def test_the_api_process_starts_without_torch() -> None:
    """The API serves stored results: importing torch would cost it about 180 MiB of memory and a second
    of start-up (models.evidence imports it only where neighbours are searched, in the worker)."""
    import subprocess

    probe = "import sys; from app.api.main import create_app; create_app(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False", "the API imported torch"
