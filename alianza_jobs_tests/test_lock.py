"""The locks are what runs. ``requirements.lock`` pins the runtime (the production image installs
it), ``requirements-dev.lock`` the same versions plus the dev tools (``make install`` and CI). The
environment holds exactly the dev lock's pins (no more, no fewer, no other version), the two agree,
and they satisfy every requirement ``pyproject.toml`` declares, so a dependency added there without
``make lock`` fails here rather than on the next fresh machine."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from alianza_jobs_tests.conftest import REPO

LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?"
)
# What a venv brings with it, and this package itself (installed from the checkout, not the lock).
NOT_LOCKED = {"pip", "setuptools", "wheel", "alianza-jobs"}


def locked(lock: Path = DEV_LOCK) -> dict[str, str]:
    """The lock's pins that apply to this interpreter and platform (its markers evaluated)."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match is None:
            continue
        marker = match["marker"]
        if marker and not Marker(marker.strip()).evaluate():
            continue
        pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def installed() -> dict[str, str]:
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if canonicalize_name(dist.metadata["Name"]) not in NOT_LOCKED
    }


def test_the_locks_parse_to_the_dependencies_we_know() -> None:
    runtime, dev = locked(LOCK), locked(DEV_LOCK)
    assert runtime["dagster"] == dev["dagster"] == "1.13.27"
    assert {"sqlalchemy", "httpx", "dagster-postgres"} <= set(runtime)
    assert {"ruff", "mypy", "uv", "dagster-dg-cli"} <= set(dev) - set(runtime)
    for lock in (LOCK, DEV_LOCK):
        # Every pin carries hashes: pip installs it with --require-hashes.
        text = lock.read_text()
        assert text.count("==") <= text.count("--hash=sha256:"), lock.name


def test_the_dev_lock_pins_the_runtime_as_the_runtime_lock_does() -> None:
    runtime, dev = locked(LOCK), locked(DEV_LOCK)
    differ = {name: (v, dev.get(name)) for name, v in runtime.items() if dev.get(name) != v}
    assert differ == {}, f"the locks disagree (runtime, dev); run `make lock`: {differ}"


def test_the_environment_is_exactly_the_lock() -> None:
    pins = {name: v for name, v in locked().items() if name not in NOT_LOCKED}
    have = installed()
    differ = {
        name: (pins.get(name, "not in the lock"), have.get(name, "not installed"))
        for name in sorted(set(pins) | set(have))
        if pins.get(name) != have.get(name)
    }
    assert differ == {}, (
        "installed set differs from requirements.lock (lock, installed); run `make install` "
        f"on a fresh venv, or `make lock` after changing pyproject.toml: {differ}"
    )


def test_the_lock_satisfies_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    unmet = []
    runtime = [(raw, LOCK) for raw in project["dependencies"]]
    dev = [(raw, DEV_LOCK) for raw in project["optional-dependencies"]["dev"]]
    for raw, lock in [*runtime, *dev]:
        pins = locked(lock)
        requirement = Requirement(raw)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": "dev"}):
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{raw} (lock: {version or 'absent'})")
    assert unmet == [], (
        f"pyproject.toml asks for what the lock does not pin; run `make lock`: {unmet}"
    )
