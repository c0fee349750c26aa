"""The platform's tables as the jobs use them, reflected through the schema map: on the Drizzle
schema (uuid ids, enum statuses, text durations, timestamps without time zone, a ``to`` column)
what the jobs write through SQLAlchemy is what the platform's ORM would have written, read back
with plain psycopg; on the stand-in the same code keeps its integer ids and float durations; a
database the map does not fit fails before anything is written; the jobs' own tables can live in
a schema of their own (``ALIANZA_DB_SCHEMA``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import insert, select, update

from alianza_jobs.db import migrate
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import metadata as jobs_metadata
from alianza_jobs.db.platform_check import check_platform
from alianza_jobs.db.platform_models import Streaming
from alianza_jobs.db.platform_tables import PlatformSchemaError, platform_tables
from alianza_jobs.db.schema_map import default_map, load_schema_map
from alianza_jobs_tests.db.helpers import (
    DRIZZLE_SCHEMA_MAP,
    create_drizzle_platform_schema,
    migrated_engine,
)

PLATFORM_TABLES = {"users", "user_sessions", "streamings", "email_queue"}
# A session zone far from UTC: a timestamp handed to Postgres with its offset would be stored as
# this zone's wall time, so only a naive UTC bind stores the UTC wall time here.
SESSION_ZONE = {"options": "-c TimeZone=America/Sao_Paulo"}


def raw_one(url: str, query: str, *params: object) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(query.encode(), params).fetchone()
        conn.commit()
    assert row is not None, query
    return row


def drizzle_streaming(url: str) -> str:
    (row_id,) = raw_one(url, "INSERT INTO streamings (external_id) VALUES ('uid-1') RETURNING id")
    return str(row_id)


async def test_the_drizzle_schema_is_reflected_under_the_jobs_names(postgres_url: str) -> None:
    create_drizzle_platform_schema(postgres_url)
    engine = create_engine(postgres_url)
    try:
        tables = await platform_tables(engine, load_schema_map(DRIZZLE_SCHEMA_MAP))
    finally:
        await engine.dispose()
    emails = tables.email_queue
    assert emails.c.to_address.name == "to"
    assert emails.c.from_address.name == "from"
    assert emails.c.last_error.name == "error"
    # Keyed by our names only: the platform's own spelling is no key, and what the map does not
    # name is not there to be read or written by mistake.
    for absent in ("to", "error", "attempts", "updated_at"):
        assert absent not in emails.c, absent
    for absent in ("title", "user_id", "updated_at"):
        assert absent not in tables.streamings.c, absent
    assert tables.has(emails, "sent_at") and not tables.has(emails, "attempts")


async def test_writes_through_the_reflected_tables_are_what_drizzle_stores(
    postgres_url: str,
) -> None:
    create_drizzle_platform_schema(postgres_url)
    row_id = drizzle_streaming(postgres_url)
    engine = create_engine(postgres_url, connect_args=SESSION_ZONE)
    try:
        tables = await platform_tables(engine, load_schema_map(DRIZZLE_SCHEMA_MAP))
        streamings = tables.streamings
        deleted = datetime(2024, 3, 10, 23, 30, 5, 123456, tzinfo=UTC)
        async with engine.begin() as conn:
            result = await conn.execute(
                update(streamings)
                .where(streamings.c.id == row_id)
                .values(status="ready", duration=12.5, deleted_at=deleted)
            )
            assert result.rowcount == 1
        assert raw_one(
            postgres_url,
            "SELECT status::text, duration, deleted_at FROM streamings WHERE id = %s",
            row_id,
        ) == ("ready", "12.5", deleted.replace(tzinfo=None))

        # The TypeScript package wrote duration?.toString(): 12, not 12.0. An aware value in
        # another zone is stored as its UTC wall time all the same.
        elsewhere = deleted.astimezone(timezone(timedelta(hours=-3)))
        async with engine.begin() as conn:
            await conn.execute(
                update(streamings)
                .where(streamings.c.id == row_id)
                .values(duration=12.0, deleted_at=elsewhere)
            )
        assert raw_one(
            postgres_url, "SELECT duration, deleted_at FROM streamings WHERE id = %s", row_id
        ) == ("12", deleted.replace(tzinfo=None))

        async with engine.connect() as conn:
            read = (
                await conn.execute(
                    select(streamings.c.id, streamings.c.duration, streamings.c.deleted_at).where(
                        streamings.c.id == row_id
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    assert isinstance(read.id, str) and read.id == str(uuid.UUID(read.id)) == row_id
    assert read.duration == 12.0 and isinstance(read.duration, float)
    assert read.deleted_at == deleted and read.deleted_at.utcoffset() == timedelta(0)


async def test_an_email_state_is_written_as_the_platform_value(postgres_url: str) -> None:
    create_drizzle_platform_schema(postgres_url)
    (email_id,) = raw_one(
        postgres_url,
        "INSERT INTO email_queue (\"to\", subject) VALUES ('ana@example.com', 'hi') RETURNING id",
    )
    engine = create_engine(postgres_url)
    try:
        tables = await platform_tables(engine, load_schema_map(DRIZZLE_SCHEMA_MAP))
        emails = tables.email_queue
        async with engine.begin() as conn:
            await conn.execute(
                update(emails)
                .where(emails.c.id == str(email_id))
                .values(status=tables.status("email_queue", "dead"), last_error="bounced")
            )
        async with engine.connect() as conn:
            to_address = await conn.scalar(
                select(emails.c.to_address).where(emails.c.id == str(email_id))
            )
    finally:
        await engine.dispose()
    assert tables.status("email_queue", "dead") == "failed"
    assert raw_one(
        postgres_url, 'SELECT status::text, error, "to" FROM email_queue WHERE id = %s', email_id
    ) == ("failed", "bounced", "ana@example.com")
    assert to_address == "ana@example.com"


async def test_the_stand_in_keeps_integer_ids_and_float_durations(database_url: str) -> None:
    async with migrated_engine(database_url) as engine:
        async with engine.begin() as conn:
            native_id = (
                await conn.execute(
                    insert(Streaming)
                    .values(external_id="uid-1", duration=3.25)
                    .returning(Streaming.id)
                )
            ).scalar_one()
        tables = await platform_tables(engine, default_map())
        streamings = tables.streamings
        row_id = str(native_id)
        async with engine.begin() as conn:
            result = await conn.execute(
                update(streamings).where(streamings.c.id == row_id).values(duration=12.0)
            )
            assert result.rowcount == 1
        async with engine.connect() as conn:
            read = (
                await conn.execute(
                    select(streamings.c.id, streamings.c.duration).where(streamings.c.id == row_id)
                )
            ).one()
            stored = await conn.scalar(select(Streaming.duration).where(Streaming.id == native_id))
    assert isinstance(native_id, int)
    assert read.id == row_id and isinstance(read.id, str)
    assert read.duration == 12.0 and isinstance(read.duration, float)
    assert stored == 12.0


async def test_a_database_the_map_does_not_fit_fails_before_anything_is_written(
    postgres_url: str,
) -> None:
    create_drizzle_platform_schema(postgres_url)
    row_id = drizzle_streaming(postgres_url)
    snapshot = (
        "SELECT (SELECT count(*) FROM streamings), (SELECT count(*) FROM email_queue),"
        " (SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'),"
        " (SELECT status::text FROM streamings WHERE id = %s)"
    )
    before = raw_one(postgres_url, snapshot, row_id)
    engine = create_engine(postgres_url)
    try:
        problems = await check_platform(engine, default_map())
        with pytest.raises(PlatformSchemaError) as err:
            await platform_tables(engine, default_map())
    finally:
        await engine.dispose()
    assert len(problems) == 4
    assert str(err.value) == f"{problems[0]} (and 3 more: `alianza-jobs db check`)"
    assert err.value.problems == problems
    assert raw_one(postgres_url, snapshot, row_id) == before == (1, 0, 4, "queued")


async def test_the_tables_are_reflected_once_per_engine_and_map(
    postgres_url: str, tmp_path: Path
) -> None:
    create_drizzle_platform_schema(postgres_url)
    drizzle_map = load_schema_map(DRIZZLE_SCHEMA_MAP)
    engine = create_engine(postgres_url)
    other_engine = create_engine(postgres_url)
    try:
        first = await platform_tables(engine, drizzle_map)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE email_queue RENAME COLUMN error TO err_msg")
        # Cached: a run checks once at its start, not before every batch.
        assert await platform_tables(engine, drizzle_map) is first
        # The same file under another name is another map: checked again, and the rename shows.
        copy = tmp_path / "schema-map.yaml"
        copy.write_text(DRIZZLE_SCHEMA_MAP.read_text())
        with pytest.raises(PlatformSchemaError, match=r"^email_queue\.last_error: column"):
            await platform_tables(engine, load_schema_map(copy))
        with pytest.raises(PlatformSchemaError, match=r"email_queue\.error does not exist"):
            await platform_tables(other_engine, drizzle_map)
    finally:
        await engine.dispose()
        await other_engine.dispose()


async def test_the_jobs_tables_can_live_in_a_schema_of_their_own(postgres_url: str) -> None:
    create_drizzle_platform_schema(postgres_url)
    engine = create_engine(postgres_url, jobs_schema="alianza_jobs")
    try:
        await migrate.upgrade(engine, schema="alianza_jobs")
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_schema IN ('public', 'alianza_jobs')"
            ).fetchall()
        tables = await platform_tables(engine, load_schema_map(DRIZZLE_SCHEMA_MAP), schema="public")
    finally:
        await engine.dispose()
    in_schema = {
        schema: {name for s, name in rows if s == schema} for schema in ("public", "alianza_jobs")
    }
    assert in_schema["public"] == PLATFORM_TABLES
    assert in_schema["alianza_jobs"] == {*jobs_metadata.tables, migrate.VERSION_TABLE}
    assert {"dead_letters", "video_checks", "alianza_jobs_version"} <= in_schema["alianza_jobs"]
    assert tables.email_queue.schema == "public"
    assert tables.email_queue.c.to_address.name == "to"
