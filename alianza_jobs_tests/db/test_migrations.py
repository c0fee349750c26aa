"""Migrations: they build the schema the models describe, are idempotent, and reverse cleanly."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, Engine, Integer, MetaData, event, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.cli import cli
from alianza_jobs.db import migrate
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import metadata

APP_TABLES = set(metadata.tables)
DDL_PREFIXES = ("CREATE", "ALTER", "DROP")


@pytest.fixture
async def empty(database_url: str) -> Any:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine runs during the test (migrations use an engine of their own
    on SQLite, so listening on one engine would miss them)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.strip())

    event.listen(Engine, "before_cursor_execute", record)
    yield seen
    event.remove(Engine, "before_cursor_execute", record)


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_on_an_empty_database_creates_the_schema(empty: AsyncEngine) -> None:
    assert await tables(empty) == set()
    result = await migrate.upgrade(empty)
    assert result == migrate.MigrationResult(before=None, after=migrate.head_revision())
    assert await tables(empty) == APP_TABLES | {"alembic_version"}
    assert await migrate.current_revision(empty) == migrate.head_revision()


async def test_models_and_migrations_agree(empty: AsyncEngine) -> None:
    await migrate.upgrade(empty)
    assert await migrate.schema_differences(empty) == []


async def test_the_comparison_notices_a_model_the_migrations_lack(empty: AsyncEngine) -> None:
    """The agreement test above is only worth something if a difference would fail it."""
    await migrate.upgrade(empty)
    drifted = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["users"].append_column(Column("nickname", Integer))
    differences = await migrate.schema_differences(empty, drifted)
    assert [d[0] for d in differences] == ["add_column"]
    assert differences[0][3].name == "nickname"


async def test_upgrade_at_head_is_a_no_op(empty: AsyncEngine, statements: list[str]) -> None:
    await migrate.upgrade(empty)
    statements.clear()
    result = await migrate.upgrade(empty)
    assert not result.changed
    assert result.after == migrate.head_revision()
    assert [s for s in statements if s.upper().startswith(DDL_PREFIXES)] == []
    assert await migrate.schema_differences(empty) == []


async def test_downgrade_to_base_then_upgrade_again(empty: AsyncEngine) -> None:
    await migrate.upgrade(empty)
    down = await migrate.downgrade(empty, "base")
    assert down == migrate.MigrationResult(before=migrate.head_revision(), after=None)
    assert await tables(empty) <= {"alembic_version"}
    up = await migrate.upgrade(empty)
    assert up.changed
    assert await tables(empty) == APP_TABLES | {"alembic_version"}
    assert await migrate.schema_differences(empty) == []


async def test_concurrent_upgrades_migrate_once(database_url: str) -> None:
    """The UI and the daemon both starting `db upgrade` at once: one migrates, the other waits."""
    engines = [create_engine(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate.upgrade(e) for e in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    assert sum(r.changed for r in results) == 1
    assert {r.after for r in results} == {migrate.head_revision()}


def test_cli_upgrade_current_downgrade(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    head = migrate.head_revision()
    assert head is not None

    current = runner.invoke(cli, ["db", "current"])
    assert current.exit_code == 0, current.output
    assert "behind" in current.output

    first = runner.invoke(cli, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert f"upgraded base (empty) -> {head}" in first.output

    second = runner.invoke(cli, ["db", "upgrade"])
    assert second.exit_code == 0, second.output
    assert "nothing to do" in second.output

    current = runner.invoke(cli, ["db", "current"])
    assert f"at {head}, head {head} (up to date)" in current.output

    down = runner.invoke(cli, ["db", "downgrade", "base"])
    assert down.exit_code == 0, down.output
    assert f"downgraded {head} -> base (empty)" in down.output


def test_cli_reports_an_unreachable_database_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2-secret@127.0.0.1:1/alianza")
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "127.0.0.1" in result.output
    assert "hunter2-secret" not in result.output


def test_cli_rejects_a_bad_url_as_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://app@db/alianza")
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "unsupported backend" in result.output


def test_migrations_ship_inside_the_package() -> None:
    shipped = {p.name for p in migrate.MIGRATIONS_DIR.rglob("*") if p.is_file()}
    assert {"env.py", "script.py.mako", "0001_initial.py"} <= shipped


def test_cli_revision_writes_the_next_numbered_migration(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a copy of the migrations directory: the package's own is never written by tests."""
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", scripts)
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()

    behind = runner.invoke(cli, ["db", "revision", "too early"])
    assert behind.exit_code != 0  # autogenerate needs the database at head

    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    wrote = runner.invoke(cli, ["db", "revision", "add nothing"])
    assert wrote.exit_code == 0, wrote.output
    [new] = (scripts / "versions").glob("0002_*.py")
    assert new.name == "0002_add_nothing.py"
    source = new.read_text()
    assert 'revision: str = "0002"' in source or "revision: str = '0002'" in source
    assert "'0001'" in source or '"0001"' in source  # down_revision
    assert migrate.head_revision() == "0002"
    upgraded = runner.invoke(cli, ["db", "upgrade"])
    assert "upgraded 0001 -> 0002" in upgraded.output
