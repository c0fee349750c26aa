"""The Database resource and its engines: URLs, SQLite settings, UTC timestamps, closing on cancel."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, insert, select, text, update
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.engine import (
    APPLICATION_NAME,
    SQLITE_BUSY_TIMEOUT_MS,
    create_engine,
    read_only,
)
from alianza_jobs.db.models import EmailDelivery, VideoCheck
from alianza_jobs.db.platform_models import EmailQueue, User
from alianza_jobs.resources import Database
from alianza_jobs.settings import mask_url
from alianza_jobs_tests.db.helpers import migrated_engine, poll, time_out_when


async def test_plain_urls_get_an_async_driver(database_url: str) -> None:
    assert database_url.startswith(("sqlite:///", "postgresql://"))
    engine = create_engine(database_url)
    try:
        assert engine.dialect.driver in ("aiosqlite", "psycopg")
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()


async def test_already_async_urls_pass_through(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    try:
        assert engine.url.drivername == "sqlite+aiosqlite"
    finally:
        await engine.dispose()


async def test_sqlite_file_in_a_missing_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    async with Database(url=f"sqlite:///{path}").engine() as engine, engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    assert path.exists()


async def test_sqlite_runs_in_wal_with_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    database = Database(url=f"sqlite:///{tmp_path / 'a.db'}")
    async with database.engine() as engine, engine.connect() as conn:
        assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert await conn.scalar(text("PRAGMA busy_timeout")) == SQLITE_BUSY_TIMEOUT_MS
        assert await conn.scalar(text("PRAGMA foreign_keys")) == 1


async def test_sqlite_transactions_take_the_write_lock_up_front(tmp_path: Path) -> None:
    statements: list[str] = []
    async with migrated_engine(f"sqlite:///{tmp_path / 'a.db'}") as engine:
        event.listen(
            engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2])
        )
        async with engine.begin() as conn:
            await conn.execute(select(User.id))
        async with read_only(engine).begin() as conn:
            await conn.execute(select(User.id))
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE", "BEGIN DEFERRED"]


async def test_sqlite_read_then_write_transactions_queue_instead_of_deadlocking(
    tmp_path: Path,
) -> None:
    """Two transactions that read, pause, then write: with deferred BEGINs both hold read locks and
    the second writer fails at once with "database is locked"; with BEGIN IMMEDIATE they queue."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    async with migrated_engine(url) as setup, setup.begin() as conn:
        await conn.execute(insert(VideoCheck), [{"streaming_id": "1"}])
    engines = [create_engine(url) for _ in range(4)]

    async def read_then_write(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            attempts = await conn.scalar(select(VideoCheck.attempts))
            await asyncio.sleep(0.05)  # widen the window in which deferred BEGINs would collide
            await conn.execute(update(VideoCheck).values(attempts=(attempts or 0) + 1))

    try:
        await asyncio.gather(*(read_then_write(e) for e in engines))
        async with engines[0].connect() as conn:
            # Serialized, so no lost update either.
            assert await conn.scalar(select(VideoCheck.attempts)) == len(engines)
    finally:
        for engine in engines:
            await engine.dispose()


# A timestamp of the jobs' own tables and one of the platform's stand-in: both are UTCDateTime.
TIMESTAMPS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "email_deliveries.next_attempt_at": (EmailDelivery, "next_attempt_at", {"email_id": "1"}),
    "email_queue.sent_at": (EmailQueue, "sent_at", {"to_address": "a@example.com", "subject": "s"}),
}


@pytest.mark.parametrize("where", sorted(TIMESTAMPS))
async def test_timestamps_are_aware_utc_on_both_backends(engine: AsyncEngine, where: str) -> None:
    model, name, row = TIMESTAMPS[where]
    plus_five = timezone(timedelta(hours=5))
    given = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=plus_five)
    async with engine.begin() as conn:
        await conn.execute(insert(model), [{**row, name: given}])
    async with engine.connect() as conn:
        read = (await conn.execute(select(getattr(model, name), model.created_at))).one()
    stamp, created_at = read
    assert stamp == given
    assert stamp.tzinfo is UTC
    assert stamp.hour == 7  # 12:30 at +05:00 is 07:30 UTC
    assert created_at.tzinfo is UTC  # server default, read back aware too
    assert abs(created_at - datetime.now(UTC)) < timedelta(minutes=5)


@pytest.mark.parametrize("where", sorted(TIMESTAMPS))
async def test_naive_datetimes_are_refused(engine: AsyncEngine, where: str) -> None:
    model, name, row = TIMESTAMPS[where]
    async with engine.begin() as conn:
        with pytest.raises(StatementError, match="naive datetime"):
            await conn.execute(insert(model), [{**row, name: datetime(2025, 1, 1)}])


def _track_connections(engine: AsyncEngine) -> dict[str, int]:
    counts = {"opened": 0, "closed": 0}

    @event.listens_for(engine.sync_engine, "connect")
    def _opened(*_: object) -> None:
        counts["opened"] += 1

    @event.listens_for(engine.sync_engine, "close")
    def _closed(*_: object) -> None:
        counts["closed"] += 1

    return counts


async def test_engine_closes_its_connections_on_exit(database_url: str) -> None:
    async with Database(url=database_url).engine() as engine:
        counts = _track_connections(engine)
        # Two open transactions at once: deferred, or the second waits for the first's write lock.
        readers = read_only(engine)
        async with readers.connect() as a, readers.connect() as b:
            await a.execute(text("SELECT 1"))
            await b.execute(text("SELECT 1"))
    assert counts == {"opened": 2, "closed": 2}


def _running(url: str, query: str) -> bool:
    """Whether the server is executing ``query`` on the database of ``url`` right now."""
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = %s AND state = 'active' AND query = %s",
            (url.rsplit("/", 1)[1], query),
        ).fetchone()
    return bool(row and row[0])


async def _started(url: str, query: str) -> None:
    """Returns once the server is executing ``query``: the moment to time the op out mid-query,
    however long it took to connect (a fixed short timeout would race the connect)."""
    running, _ = await poll(lambda: asyncio.to_thread(_running, url, query), timeout=30)
    assert running, f"{query} never ran"


async def test_engine_closes_its_connections_when_the_op_is_cancelled(database_url: str) -> None:
    """The task timeout cancels the op mid-query (Postgres) or mid-work (SQLite): still closed."""
    tracked: list[dict[str, int]] = []
    postgres = database_url.startswith("postgresql")
    query = "SELECT pg_sleep(30)" if postgres else "SELECT 1"
    working = asyncio.Event()

    async def op() -> None:
        async with Database(url=database_url).engine() as engine:
            tracked.append(_track_connections(engine))
            async with engine.connect() as conn:
                await conn.execute(text(query))
                working.set()
                await asyncio.sleep(30)

    with pytest.raises(TimeoutError):
        await time_out_when(op(), _started(database_url, query) if postgres else working.wait())
    assert tracked == [{"opened": 1, "closed": 1}]


async def test_postgres_server_sees_no_connection_after_a_cancelled_query(
    postgres_url: str,
) -> None:
    database = postgres_url.rsplit("/", 1)[1]

    def server_connections() -> int:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND application_name = %s",
                (database, APPLICATION_NAME),
            ).fetchone()
        return int(row[0]) if row else -1

    seen_during: list[int] = []

    async def op() -> None:
        async with Database(url=postgres_url).engine() as engine, engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            seen_during.append(await asyncio.to_thread(server_connections))
            await conn.execute(text("SELECT pg_sleep(30)"))

    with pytest.raises(TimeoutError):
        await time_out_when(op(), _started(postgres_url, "SELECT pg_sleep(30)"))
    assert seen_during == [1]
    assert await asyncio.to_thread(server_connections) == 0


async def test_session_helper_commits_and_closes(database_url: str) -> None:
    database = Database(url=database_url)
    async with migrated_engine(database_url):
        pass
    async with database.session() as session, session.begin():
        session.add(User(email="ana@example.com", name="Ana"))
    async with database.session() as session:
        user = (await session.scalars(select(User))).one()
    assert user.email == "ana@example.com"
    assert user.created_at.tzinfo is UTC


def test_the_database_url_shows_masked() -> None:
    database = Database(url="postgresql://app:s3cr3t-pass@db.internal:5432/alianza")
    assert "s3cr3t-pass" not in mask_url(database.url)
    assert "db.internal" in mask_url(database.url)
