"""Quick questions about the queues, asked outside any run: "is there work?".

Schedules and sensors ask before launching a run (a run is a process of several CPU-seconds; the
question is one indexed query). They are evaluated in the code server, a long-lived process, so
the engine and the reflected platform tables are made once per process and kept: a synchronous
engine of one pooled connection, because an evaluation is a plain function, and an async engine's
connections belong to the event loop that made them. Read-only: nothing here writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection, make_url

from alianza_jobs.db.engine import (
    APPLICATION_NAME,
    POSTGRES_CONNECT_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_MS,
)
from alianza_jobs.db.platform_tables import PlatformTables, reflect_platform
from alianza_jobs.db.schema_map import load_schema_map
from alianza_jobs.settings import normalize_database_url

_LOCK = threading.Lock()
_ENGINES: dict[tuple[str, str | None], Engine] = {}
_TABLES: dict[tuple[str, str | None, str | None], PlatformTables] = {}


def probe_engine(url: str, *, jobs_schema: str | None = None) -> Engine:
    """This process's read-only engine for ``url`` (made on first use, then kept)."""
    key = (url, jobs_schema)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _make_engine(url, jobs_schema)
        return engine


def _make_engine(url: str, jobs_schema: str | None) -> Engine:
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        sync = parsed.set(drivername="sqlite")
        engine = create_sync_engine(
            sync, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # A reader never takes SQLite's write lock: the driver's implicit transactions
            # are off, and these reads run in autocommit (each its own snapshot).
            dbapi_connection.isolation_level = None

        return engine
    connect_args: dict[str, Any] = {
        "application_name": f"{APPLICATION_NAME}-probe",
        "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
    }
    if jobs_schema:
        connect_args["options"] = f"-c search_path={jobs_schema},public"
    # psycopg 3 is one driver for both worlds: the async URL serves a synchronous engine too.
    return create_sync_engine(
        parsed,
        connect_args=connect_args,
        pool_size=1,
        max_overflow=1,
        pool_pre_ping=True,
        pool_recycle=300,
    )


@contextmanager
def probe_connection(
    url: str, *, schema_map_path: str | None = None, jobs_schema: str | None = None
) -> Iterator[tuple[Connection, PlatformTables]]:
    """A connection of the probe engine and the platform's tables (reflected once per process,
    through the schema map at ``schema_map_path``, or the default map)."""
    engine = probe_engine(url, jobs_schema=jobs_schema)
    key = (url, jobs_schema, schema_map_path)
    with engine.connect() as conn:
        tables = _TABLES.get(key)
        if tables is None:
            schema = "public" if jobs_schema else None
            tables = reflect_platform(conn, load_schema_map(schema_map_path), schema=schema)
            conn.rollback()
            with _LOCK:
                _TABLES[key] = tables
        yield conn, tables
        conn.rollback()


def forget_probes() -> None:
    """Drop the kept engines and tables (tests that recreate a database under the same URL)."""
    with _LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
        _TABLES.clear()


__all__ = ["forget_probes", "probe_connection", "probe_engine"]
