"""Fixtures of the reliability suite: the results it records, its emulator server, app databases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

# The real Pushgateway fixture of the metrics tests, for the secrets test to search.
from alianza_jobs_tests.platform.conftest import pushgateway  # noqa: F401
from alianza_jobs_tests.reliability import results
from alianza_jobs_tests.reliability.harness import (
    Audit,
    EmulatorServer,
    Namespace,
    migrate,
    namespace_for,
)

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_SESSION: dict[str, results.TestResult] = {}
_STARTED: list[float] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


class Outcomes:
    """What one test tried: ``outcome.add("crash", "SIGKILL mid-send", runs=2, items=120,
    lost=0, duplicated=0)``. Rows are written to ``test-artifacts/reliability/results.json`` whether the test passes or not
    (a failing test shows in the table as such)."""

    def __init__(self) -> None:
        self.rows: list[results.Row] = []
        self.started = time.monotonic()

    def add(
        self,
        section: str,
        fault: str,
        *,
        runs: int,
        items: int,
        lost: int = 0,
        duplicated: int = 0,
    ) -> None:
        self.rows.append(results.Row(section, fault, runs, items, lost, duplicated))

    def add_audit(
        self, section: str, fault: str, *, runs: int, audit: Audit, also_lost: int = 0
    ) -> None:
        """``add`` with the counts of an :class:`Audit` (plus ``also_lost`` items it cannot see)."""
        self.add(
            section,
            fault,
            runs=runs,
            items=audit.items,
            lost=also_lost + len(audit.lost),
            duplicated=len(audit.duplicated),
        )


@pytest.fixture(scope="session", autouse=True)
def _reliability_results(request: pytest.FixtureRequest) -> Iterator[None]:
    _STARTED.append(time.monotonic())
    yield
    if _SESSION:
        collected = {item.nodeid for item in request.session.items}
        results.save(
            _SESSION, collected=collected, wall_time_s=round(time.monotonic() - _STARTED[0], 1)
        )


@pytest.fixture
def outcome(request: pytest.FixtureRequest) -> Iterator[Outcomes]:
    recorder = Outcomes()
    yield recorder
    reports = request.node.stash.get(_REPORTS, {})
    call = reports.get("call") or reports.get("setup")
    status = call.outcome if call is not None else "failed"
    if call is not None and hasattr(call, "wasxfail"):
        status = "xfailed" if call.outcome == "skipped" else "xpassed"
    _SESSION[request.node.nodeid] = results.TestResult(
        outcome=status,
        duration_s=round(time.monotonic() - recorder.started, 2),
        rows=recorder.rows,
    )


@pytest.fixture(scope="session")
def emulator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    server = EmulatorServer.start(tmp_path_factory.mktemp("reliability-emulators"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def emulators(emulator_server: EmulatorServer, request: pytest.FixtureRequest) -> Namespace:
    """This test's own Stream and Resend (fresh videos, inbox, faults and counters)."""
    return emulator_server.namespace(namespace_for(request.node.nodeid))


@pytest.fixture
def pg_url(make_postgres_database: Callable[[], str]) -> str:
    """A fresh Postgres database with the schema at head."""
    url = make_postgres_database()
    asyncio.run(migrate(url))
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    asyncio.run(migrate(url))
    return url
