"""Migrations: they build the schema the models describe, are idempotent, and reverse cleanly;
they create only the jobs' own tables, and never touch the platform's that share the database."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    event,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.cli import cli
from alianza_jobs.db import migrate
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import metadata
from alianza_jobs.db.platform_models import Streaming, create_stand_in
from alianza_jobs_tests.db.helpers import create_drizzle_platform_schema

# The jobs' own tables: all the migrations make (the platform's belong to its ORM).
APP_TABLES = {
    "dead_letters",
    "sync_state",
    "stream_videos",
    "daily_reports",
    "circuit_breakers",
    "video_checks",
    "email_deliveries",
    "stream_webhook_deliveries",
}
VERSION_TABLE = "alianza_jobs_version"
PLATFORM_TABLES = {"users", "user_sessions", "streamings", "email_queue"}
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


def test_the_jobs_own_tables_are_what_the_migrations_make() -> None:
    assert set(metadata.tables) == APP_TABLES
    assert migrate.head_revision() == "0002"
    assert migrate.VERSION_TABLE == VERSION_TABLE


async def test_upgrade_on_an_empty_database_creates_the_schema(empty: AsyncEngine) -> None:
    assert await tables(empty) == set()
    result = await migrate.upgrade(empty)
    assert result == migrate.MigrationResult(before=None, after=migrate.head_revision())
    # Only the jobs' tables, and a version table of their own: the platform's tables are not
    # made here, and a platform keeping its own Alembic history keeps `alembic_version`.
    assert await tables(empty) == APP_TABLES | {VERSION_TABLE}
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
    drifted.tables["video_checks"].append_column(Column("nickname", Integer))
    Table("new_jobs_table", drifted, Column("id", Integer, primary_key=True))
    differences = await migrate.schema_differences(empty, drifted)
    assert sorted(d[0] for d in differences) == ["add_column", "add_table"]
    [added_column] = [d for d in differences if d[0] == "add_column"]
    assert (added_column[2], added_column[3].name) == ("video_checks", "nickname")
    [added_table] = [d for d in differences if d[0] == "add_table"]
    assert added_table[1].name == "new_jobs_table"


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
    assert await tables(empty) <= {VERSION_TABLE}
    up = await migrate.upgrade(empty)
    assert up.changed
    assert await tables(empty) == APP_TABLES | {VERSION_TABLE}
    assert await migrate.schema_differences(empty) == []


def platform_catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the platform's ORM made, as the catalog describes it: every column of its tables (type,
    default, nullability), its enums, its indexes and constraints."""
    names = sorted(PLATFORM_TABLES)
    with psycopg.connect(url) as conn:
        queries = {
            "columns": (
                "SELECT table_name, column_name, ordinal_position, data_type, udt_name,"
                " column_default, is_nullable, character_maximum_length"
                " FROM information_schema.columns WHERE table_name = ANY(%s)"
                " ORDER BY table_name, ordinal_position"
            ),
            "enums": (
                "SELECT t.typname, e.enumlabel, e.enumsortorder FROM pg_enum e"
                " JOIN pg_type t ON t.oid = e.enumtypid ORDER BY t.typname, e.enumsortorder"
            ),
            "indexes": (
                "SELECT tablename, indexname, indexdef FROM pg_indexes"
                " WHERE tablename = ANY(%s) ORDER BY tablename, indexname"
            ),
            "constraints": (
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                " FROM pg_constraint WHERE conrelid::regclass::text = ANY(%s) ORDER BY 1, 2"
            ),
        }
        return {
            what: conn.execute(query.encode(), (names,) if "%s" in query else ()).fetchall()
            for what, query in queries.items()
        }


def platform_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id::text, external_id, status::text FROM streamings ORDER BY external_id"
        ).fetchall()


async def test_upgrade_leaves_the_platforms_drizzle_tables_untouched(postgres_url: str) -> None:
    """On the platform's database its ORM made its tables first: upgrading adds the jobs' tables
    beside them and changes nothing of theirs, the comparison proposes nothing for them (no
    drop_table for tables our models lack), and going back to base drops none of them."""
    create_drizzle_platform_schema(postgres_url)
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO streamings (external_id) VALUES ('uid-1'), ('uid-2')")
        conn.execute("INSERT INTO users (email) VALUES ('ana@example.com')")
    before, rows = platform_catalog(postgres_url), platform_rows(postgres_url)
    assert before["columns"] and before["enums"]
    engine = create_engine(postgres_url)
    try:
        result = await migrate.upgrade(engine)
        assert result == migrate.MigrationResult(before=None, after=migrate.head_revision())
        assert await tables(engine) == PLATFORM_TABLES | APP_TABLES | {VERSION_TABLE}
        assert platform_catalog(postgres_url) == before
        assert await migrate.schema_differences(engine) == []
        assert not (await migrate.upgrade(engine)).changed

        await migrate.downgrade(engine, "base")
        assert await tables(engine) - {VERSION_TABLE} == PLATFORM_TABLES
        assert platform_catalog(postgres_url) == before
        assert platform_rows(postgres_url) == rows

        assert (await migrate.upgrade(engine)).changed
        assert platform_catalog(postgres_url) == before
    finally:
        await engine.dispose()


async def test_downgrade_to_base_never_drops_a_platform_table(empty: AsyncEngine) -> None:
    """With the stand-in, and a platform that keeps its own Alembic history in `alembic_version`:
    the jobs' migrations neither read nor drop either, going up or down."""
    await create_stand_in(empty)
    platform_history = Table(
        "alembic_version", MetaData(), Column("version_num", Integer, primary_key=True)
    )
    async with empty.begin() as conn:
        await conn.run_sync(platform_history.metadata.create_all)
        await conn.execute(insert(platform_history).values(version_num=4242))
        await conn.execute(insert(Streaming).values(external_id="uid-1"))
    platform = PLATFORM_TABLES | {"alembic_version"}

    up = await migrate.upgrade(empty)
    assert up == migrate.MigrationResult(before=None, after=migrate.head_revision())
    assert await tables(empty) == platform | APP_TABLES | {VERSION_TABLE}
    assert await migrate.schema_differences(empty) == []

    await migrate.downgrade(empty, "base")
    assert await tables(empty) - {VERSION_TABLE} == platform
    async with empty.connect() as conn:
        assert await conn.scalar(select(platform_history.c.version_num)) == 4242
        assert await conn.scalar(select(func.count()).select_from(Streaming)) == 1
    assert await migrate.current_revision(empty) is None


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
    assert {"env.py", "script.py.mako", "0001_the_jobs_own_tables.py"} <= shipped


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
    [new] = (scripts / "versions").glob("0003_*.py")
    assert new.name == "0003_add_nothing.py"
    source = new.read_text()
    assert 'revision: str = "0003"' in source or "revision: str = '0003'" in source
    assert "'0002'" in source or '"0002"' in source  # down_revision
    assert migrate.head_revision() == "0003"
    upgraded = runner.invoke(cli, ["db", "upgrade"])
    assert "upgraded 0002 -> 0003" in upgraded.output
