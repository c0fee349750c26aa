"""The platform's tables as the jobs use them: reflected from the live database, through the map.

Each table is reflected once per engine, after :func:`~alianza_jobs.db.platform_check.check_platform`
passed (a database that fails it fails here, at the start of a run, never halfway through a
batch). Columns are keyed by the jobs' names (``table.c.to_address`` renders ``"to"``), and typed
so what the jobs write is what the column stores: an id is text in Python whatever the column
(:class:`~alianza_jobs.db.types.PlatformKey`), a text ``duration`` gets "12.5", a timestamp
without time zone gets naive UTC, an enum status gets only its enum's values (the map says
which). Columns the map does not name are not reflected at all: the jobs never see them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, MetaData, Table, Text, cast, inspect, types
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.platform_check import check_platform
from alianza_jobs.db.schema_map import SchemaMap, TableMap
from alianza_jobs.db.types import (
    DurationText,
    NaiveUTCDateTime,
    PlatformKey,
    UTCDateTime,
)

KEYS = ("id", "user_id")


class PlatformSchemaError(RuntimeError):
    """The database does not hold what the schema map promises: the first problem, and how many
    more ``alianza-jobs db check`` lists."""

    def __init__(self, problems: list[str]) -> None:
        more = f" (and {len(problems) - 1} more: `alianza-jobs db check`)" if problems[1:] else ""
        super().__init__(problems[0] + more)
        self.problems = problems


@dataclass(frozen=True)
class PlatformTables:
    schema_map: SchemaMap
    streamings: Table
    email_queue: Table
    users: Table
    user_sessions: Table

    def status(self, key: str, state: str) -> str:
        """The platform's status value for our ``state`` of table ``key``."""
        return self.schema_map.tables[key].status(state)

    def has(self, table: Table, ours: str) -> bool:
        """Does the platform table have (a column mapped to) our column ``ours``?"""
        return ours in table.c


def key_as_text(platform: Table) -> ColumnElement[str]:
    """The platform row's id as the text the jobs' bookkeeping tables key on."""
    return cast(platform.c.id, Text())


def keyed_by(platform: Table, key: ColumnElement[Any]) -> ColumnElement[bool]:
    """The platform row whose id the bookkeeping ``key`` (text) holds. The jobs' side is cast to
    the platform's key type, so the platform's primary key index answers the look-up (the other
    way round would cast every platform id)."""
    key_type = platform.c.id.type
    native = key_type.native if isinstance(key_type, PlatformKey) else key_type
    return platform.c.id == cast(key, native)


_CACHE: weakref.WeakKeyDictionary[Any, PlatformTables] = weakref.WeakKeyDictionary()


async def platform_tables(
    engine: AsyncEngine, schema_map: SchemaMap, *, schema: str | None = None
) -> PlatformTables:
    """The platform's tables on ``engine``'s database, checked against ``schema_map`` first.

    ``schema``: where they live when it is not the connection's default (the jobs' own tables
    have a schema of their own, ``ALIANZA_DB_SCHEMA``). Raises :class:`PlatformSchemaError`.
    """
    cached = _CACHE.get(engine.sync_engine)
    if (
        cached is not None
        and cached.schema_map == schema_map
        and cached.streamings.schema == schema
    ):
        return cached
    problems = await check_platform(engine, schema_map, schema=schema)
    if problems:
        raise PlatformSchemaError(problems)
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: _reflect(sync, schema_map, schema))
    _CACHE[engine.sync_engine] = tables
    return tables


def reflect_platform(
    conn: Connection, schema_map: SchemaMap, *, schema: str | None = None
) -> PlatformTables:
    """The platform's tables reflected on a synchronous connection, without the check (the
    work probes: a database that fails the check fails the run they launch, with its message)."""
    return _reflect(conn, schema_map, schema)


def _reflect(conn: Connection, schema_map: SchemaMap, schema: str | None) -> PlatformTables:
    metadata = MetaData()
    inspector = inspect(conn)
    reflected = {
        key: _reflect_table(conn, inspector, metadata, table_map, schema)
        for key, table_map in schema_map.tables.items()
    }
    return PlatformTables(schema_map=schema_map, **reflected)


def _reflect_table(
    conn: Connection, inspector: Any, metadata: MetaData, table_map: TableMap, schema: str | None
) -> Table:
    ours_by_theirs = {theirs: ours for ours, theirs in table_map.columns.items() if theirs}

    def rekey(_inspector: Any, _table: Table, column_info: dict[str, Any]) -> None:
        ours = ours_by_theirs.get(column_info["name"])
        if ours is None:
            return
        column_info["key"] = ours
        column_info["type"] = _our_type(ours, column_info["type"])

    return Table(
        table_map.table,
        metadata,
        schema=schema,
        autoload_with=conn,
        include_columns=list(ours_by_theirs),
        resolve_fks=False,
        listeners=[("column_reflect", rekey)],
    )


def _our_type(ours: str, native: types.TypeEngine[Any]) -> types.TypeEngine[Any]:
    if ours in KEYS:
        return PlatformKey(native)
    if isinstance(native, types.DateTime):
        # SQLite reports every DATETIME without a zone: the stand-in keeps naive UTC there, which
        # NaiveUTCDateTime reads and writes alike.
        return UTCDateTime() if native.timezone else NaiveUTCDateTime()
    if ours == "duration" and isinstance(native, types.String):
        return DurationText()
    return native


__all__ = [
    "PlatformSchemaError",
    "PlatformTables",
    "key_as_text",
    "keyed_by",
    "platform_tables",
    "reflect_platform",
]
