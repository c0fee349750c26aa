"""The application database as a Dagster resource: async engines for SQLite and Postgres.

A task opens an engine for the length of its op and no longer (``async with database.engine()``),
so its connections close when the op returns, fails or times out. The URL is the one the user's
other tools use; the async driver (psycopg 3, aiosqlite) is chosen here. How SQLite is made safe
for many processes: docs/platform.md, "alianza_jobs.db.engine".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

from alianza_jobs.settings import normalize_database_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_S = 10
APPLICATION_NAME = "alianza-jobs"
# Execution option read by the SQLite BEGIN hook: "IMMEDIATE" (default) or "DEFERRED".
SQLITE_BEGIN_OPTION = "alianza_sqlite_begin"


def create_engine(
    url: str, *, echo: bool = False, jobs_schema: str | None = None, **engine_kwargs: Any
) -> AsyncEngine:
    """An async engine for a plain or async SQLAlchemy URL; the caller disposes of it.

    ``jobs_schema`` (Postgres; ``ALIANZA_DB_SCHEMA``): the schema of the jobs' own tables, first on
    the search path, so they are created and found there while the platform's tables are found in
    ``public`` as before.
    """
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo=echo, **engine_kwargs)
    connect_args = {
        "application_name": APPLICATION_NAME,
        "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
        **({"options": f"-c search_path={jobs_schema},public"} if jobs_schema else {}),
        **engine_kwargs.pop("connect_args", {}),
    }
    return _create_async_engine(parsed, echo=echo, connect_args=connect_args, **engine_kwargs)


def _sqlite_engine(url: URL, *, echo: bool, **engine_kwargs: Any) -> AsyncEngine:
    if url.database:
        # `sqlite:///.alianza/dagster_home/alianza.db` should work on a fresh checkout.
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = {
        "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
        **engine_kwargs.pop("connect_args", {}),
    }
    engine = _create_async_engine(url, echo=echo, connect_args=connect_args, **engine_kwargs)
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the sqlite3 driver from issuing its own (deferred) BEGIN; _on_begin issues ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _ensure_wal(cursor)
            # WAL with synchronous=NORMAL is durable against crashes of the process; only a power
            # loss can drop the last commits, and it is several times faster than FULL.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # 64 MB of page cache instead of SQLite's 2 MB: batch deletes and bulk updates walk
            # several indexes at once, and overflowing the cache made session cleanup 30% slower.
            cursor.execute("PRAGMA cache_size = -65536")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"{SQLITE_BEGIN_OPTION}={mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _ensure_wal(cursor: Any, attempts: int = 5) -> None:
    """Switch the file to WAL (a persistent setting: usually it already is).

    Switching needs an exclusive lock and SQLite does not wait for it (no busy handler there): a
    second process opening a fresh file at the same moment gets "database is locked" at once. So
    on failure wait for the other side through the busy handler (BEGIN IMMEDIATE waits), then look
    again: usually the other connection has switched the file already.
    """
    for attempt in range(attempts):
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("ROLLBACK")


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """The same engine, but on SQLite its transactions BEGIN DEFERRED (they never block a writer).

    Only for work that does not write: a deferred transaction that writes can fail on the lock
    upgrade. Postgres ignores the option.
    """
    return engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # Objects stay readable after commit: tasks commit a batch and then log or report its rows.
    return async_sessionmaker(engine, expire_on_commit=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


__all__ = [
    "create_engine",
    "is_sqlite",
    "read_only",
    "session_factory",
]
