"""The package's layers: which modules may import which, and who reads the environment."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from alianza_jobs_tests.conftest import REPO

PACKAGE = REPO / "alianza_jobs"
BASE = {"alianza_jobs.settings", "alianza_jobs.logs", "alianza_jobs.redaction"}


def _modules(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _package_imports(path: Path) -> set[str]:
    return {m for m in _imports(path) if m == "alianza_jobs" or m.startswith("alianza_jobs.")}


def _outside(imports: set[str], allowed_prefixes: tuple[str, ...]) -> set[str]:
    return {
        m
        for m in imports
        if m not in BASE and not any(m == p or m.startswith(f"{p}.") for p in allowed_prefixes)
    }


def test_base_modules_import_only_each_other() -> None:
    for name in ("settings", "logs", "redaction"):
        path = PACKAGE / f"{name}.py"
        assert _outside(_package_imports(path), ()) == set(), path.name


def test_the_database_layer_imports_only_itself_and_the_base_modules() -> None:
    for path in _modules(PACKAGE / "db"):
        assert _outside(_package_imports(path), ("alianza_jobs.db",)) == set(), path


def test_the_clients_import_neither_dagster_nor_other_layers() -> None:
    for path in _modules(PACKAGE / "clients"):
        imports = _imports(path)
        assert not any(m == "dagster" or m.startswith("dagster.") for m in imports), path
        assert "importlib" not in imports, path
        assert _outside(_package_imports(path), ("alianza_jobs.clients",)) == set(), path


def test_the_emulator_constants_are_plain_values() -> None:
    assert _package_imports(PACKAGE / "emulators" / "constants.py") == set()


def test_only_settings_reads_the_environment() -> None:
    readers = [
        path.relative_to(REPO).as_posix()
        for path in _modules(PACKAGE)
        if "os.environ" in (text := path.read_text(encoding="utf-8")) or "getenv" in text
    ]
    assert readers == ["alianza_jobs/settings.py"]


def test_loading_the_code_location_does_not_load_the_emulators() -> None:
    code = (
        "import sys, alianza_jobs.definitions; "
        "print(sorted(m for m in sys.modules if m.startswith(('starlette', 'alianza_jobs.emulators.'))"
        " and m != 'alianza_jobs.emulators.constants'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
