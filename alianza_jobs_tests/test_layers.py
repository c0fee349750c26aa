"""The package's import rules: each folder says what its files may import.

Read from the source (every ``import``, top-level or inside a function), so a lazy import cannot
slip past. The rules, from the bottom up:

- base (``settings``, ``logs``, ``redaction``): each other only;
- ``db/``: itself and base;
- ``clients/``: itself and base, and never Dagster (the HTTP clients work without it);
- ``emulators/``: itself only (they stand alone, like the real APIs they imitate);
- only ``settings.py`` reads the environment, and loading the code location loads no emulator.
- ``platform/``: base, ``db``, ``clients``;
- ``resources.py``: all of the above;
- ``defs/<domain>/``: all of the above, its own domain, and another domain only through that
  domain's package (``alianza_jobs.defs.emails``), never its modules;
- ``definitions.py``: the domains' ``definitions`` modules and what they stand on;
- ``cli/``: anything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "alianza_jobs"
BASE = {"alianza_jobs.settings", "alianza_jobs.logs", "alianza_jobs.redaction"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module the file imports, absolute, including ``from x import y`` as ``x.y``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: use absolute imports")
            base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def ours(imported: set[str]) -> set[str]:
    return {name for name in imported if name == "alianza_jobs" or name.startswith("alianza_jobs.")}


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    for layer in ("db", "clients", "emulators", "platform", "defs", "cli"):
        if within(module, f"alianza_jobs.{layer}"):
            return layer
    return module.removeprefix("alianza_jobs.")


# What each layer may import besides the base modules.
LOWER: dict[str, tuple[str, ...]] = {
    "base": (),
    "db": ("alianza_jobs.db",),
    "clients": ("alianza_jobs.clients",),
    "platform": ("alianza_jobs.db", "alianza_jobs.clients", "alianza_jobs.platform"),
    "resources": (
        "alianza_jobs.db",
        "alianza_jobs.clients",
        "alianza_jobs.platform",
        "alianza_jobs.emulators",
    ),
}
LOWER["defs"] = (*LOWER["resources"], "alianza_jobs.resources")
LOWER["definitions"] = (*LOWER["defs"], "alianza_jobs.defs")


def public_api_of_another_domain(name: str) -> bool:
    """``alianza_jobs.defs.<domain>`` or a name it exports, not one of its modules."""
    parts = name.split(".")
    if parts[:2] != ["alianza_jobs", "defs"] or len(parts) not in (3, 4):
        return False
    if len(parts) == 3:
        return True
    folder = PACKAGE / "defs" / parts[2]
    return not (folder / f"{parts[3]}.py").exists() and not (folder / parts[3]).is_dir()


def violations(path: Path) -> list[str]:
    module = module_name(path)
    layer = layer_of(module)
    imported = imports_of(path)
    wrong: list[str] = []
    if layer == "clients":
        wrong += [
            f"{n} (clients know nothing of Dagster)"
            for n in sorted(imported)
            if within(n, "dagster")
        ]
    if layer == "cli":
        return wrong
    for name in sorted(ours(imported) - {"alianza_jobs"}):
        if layer == "emulators":
            if not within(name, "alianza_jobs.emulators"):
                wrong.append(name)
            continue
        if within(name, *BASE, *LOWER.get(layer, ())):
            continue
        if layer == "defs":
            domain = ".".join(module.split(".")[:3])  # alianza_jobs.defs.<domain>
            if within(name, domain) or public_api_of_another_domain(name):
                continue
            wrong.append(f"{name} (another domain's internals)")
            continue
        if layer == "definitions" and not within(name, "alianza_jobs.cli"):
            continue
        wrong.append(name)
    return wrong


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_layer_has_files_the_rules_apply_to() -> None:
    layers = {layer_of(module_name(p)) for p in FILES}
    assert {"base", "db", "clients", "emulators", "platform", "resources", "defs", "cli"} <= layers


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layer_rules(path: Path) -> None:
    assert violations(path) == []


def test_the_checker_catches_a_backward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "alianza_jobs"
    for rel, text in {
        "db/bad.py": "from alianza_jobs.resources import Database\n",
        "clients/bad.py": "import dagster\n",
        "emulators/bad.py": "from alianza_jobs.settings import load_settings\n",
        "defs/emails/bad.py": "from alianza_jobs.defs.videos.queue import x\n",
        "defs/emails/good.py": "from alianza_jobs.defs.videos import x\nfrom alianza_jobs.db import models\n",
    }.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    (fake / "defs/videos").mkdir(parents=True, exist_ok=True)
    (fake / "defs/videos/queue.py").write_text("x = 1\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    assert violations(fake / "db/bad.py") == [
        "alianza_jobs.resources",
        "alianza_jobs.resources.Database",
    ]
    assert violations(fake / "clients/bad.py") == ["dagster (clients know nothing of Dagster)"]
    assert violations(fake / "emulators/bad.py") == [
        "alianza_jobs.settings",
        "alianza_jobs.settings.load_settings",
    ]
    assert violations(fake / "defs/emails/bad.py") == [
        "alianza_jobs.defs.videos.queue (another domain's internals)",
        "alianza_jobs.defs.videos.queue.x (another domain's internals)",
    ]
    assert violations(fake / "defs/emails/good.py") == []


def test_the_clients_reach_nothing_by_importlib() -> None:
    for path in sorted((PACKAGE / "clients").rglob("*.py")):
        assert "importlib" not in imports_of(path), path


def test_only_settings_reads_the_environment() -> None:
    readers = [
        path.relative_to(PACKAGE.parent).as_posix()
        for path in FILES
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
        [sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
