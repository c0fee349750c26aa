"""Shared fixtures: a private DAGSTER_HOME per test, and real Postgres databases.

Postgres tests talk to the server at ``ALIANZA_TEST_POSTGRES_URL`` (default: the local one, trust
auth). Without a server they skip, unless ``ALIANZA_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), when
they fail: CI must never pass by skipping the real database.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.probe import forget_probes
from alianza_jobs.settings import ENV_VARIABLES

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "ALIANZA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("ALIANZA_REQUIRE_POSTGRES", "") == "1"
# Variables a developer's shell may carry that would change what a test sees.
_ISOLATED_ENV = ENV_VARIABLES

# Dagster points SIGTERM at whatever handles SIGINT (dagster._utils.interrupts, on every in-process
# execution). Started with SIGINT ignored, as a background job of a non-interactive shell is, that
# leaves SIGTERM ignored here and in every process a test starts afterwards: terminate() of an
# emulator server or `tail --follow` does nothing and the test times out waiting for it. With
# Python's own handler, SIGTERM gets a handler here, which a child process resets to the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Every test gets its own DAGSTER_HOME (with the repo's dagster.yaml) and a clean environment,
    and leaves no work-probe connection behind (they are kept per process, by URL)."""
    for name in list(os.environ):
        if name in _ISOLATED_ENV or name.startswith(("ALIANZA_CRON_", "ALIANZA_FRESHNESS_")):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("ALIANZA_TEST_STATE_DIR", str(tmp_path / "state"))
    yield home
    forget_probes()


@pytest.fixture(autouse=True)
def _no_inherited_defs_state_storage() -> Iterator[None]:
    """Each Dagster instance puts its storage of definitions state in a process-wide context
    variable until it is disposed; one an earlier test left behind (its instance since collected)
    makes the next load of a code location fail ("undefined DagsterInstance weakref"). Every test
    starts without one; instances it makes set their own."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture
def dagster_home(_isolated_env: Path) -> Path:
    return _isolated_env


def _postgres_unavailable(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"Postgres is required (ALIANZA_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(f"Postgres not available: {reason}")


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        _postgres_unavailable(f"cannot connect to {PG_ADMIN_URL}: {exc}".splitlines()[0])
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def make_postgres_database(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """Creates fresh databases on demand; drops every one of them when the session ends."""
    created: list[str] = []

    def create() -> str:
        name = f"alianza_test_{os.getpid()}_{secrets.token_hex(4)}"
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        base = psycopg.conninfo.conninfo_to_dict(postgres_admin_url)
        user = base.get("user") or "postgres"
        host = base.get("host") or "127.0.0.1"
        port = base.get("port") or 5432
        return f"postgresql://{user}@{host}:{port}/{name}"

    yield create
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        for name in created:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def postgres_url(make_postgres_database: Callable[[], str]) -> str:
    """A fresh, empty Postgres database for one test (plain ``postgresql://`` URL)."""
    return make_postgres_database()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on the real Postgres: a fresh, empty database each time."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A fresh database (SQLite file or new Postgres database) migrated to head."""
    from alianza_jobs_tests.db.helpers import migrated_engine

    async with migrated_engine(database_url) as migrated:
        yield migrated


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """The emulators' state directory for one test (what DAGSTER_HOME/emulators is in a deployment)."""
    return tmp_path / "emulators"
