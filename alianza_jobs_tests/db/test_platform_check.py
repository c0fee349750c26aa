"""``db check``: the jobs' own schema passes; a platform schema made by Drizzle, and columns whose
types cannot hold what the jobs write, are one line per problem naming the map key, the column
and what would fit."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from alianza_jobs.cli import cli
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.platform_check import check_platform
from alianza_jobs.db.schema_map import default_map
from alianza_jobs_tests.db.helpers import (
    DRIZZLE_SCHEMA_MAP,
    create_drizzle_platform_schema,
    migrated_engine,
)

HAS = "the table has attempts, created_at, error, from, html, id, sent_at, status, subject, text, to, updated_at"
DRIZZLE_PROBLEMS = [
    "email_queue.to_address: column email_queue.to_address does not exist (schema map "
    f"email_queue.columns.to_address; {HAS})",
    "email_queue.from_address: column email_queue.from_address does not exist (schema map "
    f"email_queue.columns.from_address; {HAS})",
    "email_queue.status: email_queue.status is enum email_status, which lacks 'dead', "
    "'sending' (it holds pending, sent, failed); text, varchar or an enum holding every "
    "mapped status would fit",
    "email_queue.last_error: column email_queue.last_error does not exist (schema map "
    f"email_queue.columns.last_error; {HAS})",
]


async def test_the_jobs_schema_passes(database_url: str) -> None:
    async with migrated_engine(database_url) as engine:
        assert await check_platform(engine, default_map()) == []


async def test_a_drizzle_platform_schema_is_named_column_by_column(postgres_url: str) -> None:
    create_drizzle_platform_schema(postgres_url)
    engine = create_engine(postgres_url)
    try:
        assert await check_platform(engine, default_map()) == DRIZZLE_PROBLEMS
    finally:
        await engine.dispose()


async def test_types_that_cannot_hold_what_the_jobs_write(postgres_url: str) -> None:
    async with migrated_engine(postgres_url):
        pass
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE streamings ALTER COLUMN duration TYPE integer USING NULL")
        conn.execute("ALTER TABLE user_sessions ALTER COLUMN expires_at TYPE text")
        conn.execute("ALTER TABLE email_queue DROP CONSTRAINT ck_email_queue_status")
        conn.execute("ALTER TABLE email_queue ALTER COLUMN status TYPE varchar(4)")
        conn.execute("DROP TABLE users CASCADE")
    engine = create_engine(postgres_url)
    try:
        problems = await check_platform(engine, default_map())
    finally:
        await engine.dispose()
    assert problems == [
        "streamings.duration: streamings.duration is integer, which cannot hold a duration such "
        "as 12.5 s; double precision, real, numeric or text would fit",
        "email_queue.status: email_queue.status is varchar(4), which is too short for "
        "'pending'; text, varchar or an enum holding every mapped status would fit",
        "users: table 'users' does not exist (schema map users.table)",
        "user_sessions.expires_at: user_sessions.expires_at is text, which does not hold a "
        "timestamp; timestamp (with or without time zone) would fit",
    ]


def test_cli_check_passes_the_jobs_schema_and_fails_drizzles(
    postgres_url: str, make_postgres_database: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    # The jobs' migrations no longer create the platform's tables; locally the stand-in does.
    assert runner.invoke(cli, ["db", "platform-stand-in"]).exit_code == 0
    ok = runner.invoke(cli, ["db", "check"])
    assert ok.exit_code == 0, ok.output
    assert "the platform tables hold what the jobs read and write (4 tables)" in ok.output

    drizzle_url = make_postgres_database()  # type: ignore[operator]
    create_drizzle_platform_schema(drizzle_url)
    monkeypatch.setenv("DATABASE_URL", drizzle_url)
    bad = runner.invoke(cli, ["db", "check"])
    assert bad.exit_code == 1, bad.output
    lines = bad.output.strip().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == DRIZZLE_PROBLEMS


def test_cli_check_passes_drizzles_schema_with_its_map(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_drizzle_platform_schema(postgres_url)
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("ALIANZA_SCHEMA_MAP", str(DRIZZLE_SCHEMA_MAP))
    ok = CliRunner().invoke(cli, ["db", "check"])
    assert ok.exit_code == 0, ok.output
    assert "the platform tables hold what the jobs read and write (4 tables)" in ok.output


def test_cli_check_names_a_mapped_column_that_does_not_exist(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    create_drizzle_platform_schema(postgres_url)
    # Drizzle's map with one column misnamed, so that column is the only problem.
    drizzle_map = DRIZZLE_SCHEMA_MAP.read_text()
    assert "last_error: error" in drizzle_map
    path = tmp_path / "schema-map.yaml"
    path.write_text(drizzle_map.replace("last_error: error", "last_error: err_msg"))
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("ALIANZA_SCHEMA_MAP", str(path))
    bad = CliRunner().invoke(cli, ["db", "check"])
    assert bad.exit_code == 1, bad.output
    lines = bad.output.strip().splitlines()
    assert len(lines) == 1, bad.output
    problem = lines[0].split(": ", 1)[1]
    assert problem.startswith("email_queue.last_error: column email_queue.err_msg does not exist")
    assert "schema map email_queue.columns.last_error" in problem
