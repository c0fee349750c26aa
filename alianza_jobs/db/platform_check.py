"""``db check``: the live database against the schema map, one line per problem.

A mapped table or column that does not exist, or whose type cannot hold what the jobs write there
(a status enum lacking a mapped value, an integer ``duration`` for 12.5 s, a timestamp column
that is text), is a line naming it and what would fit. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import inspect, types
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.schema_map import SchemaMap, TableMap

# What each of our columns holds, which decides the types that fit it.
KEY, TEXT, STATUS, DURATION, TIMESTAMP = "key", "text", "status", "duration", "timestamp"
KINDS: dict[str, str] = {
    "id": KEY,
    "user_id": KEY,
    "status": STATUS,
    "duration": DURATION,
    "created_at": TIMESTAMP,
    "deleted_at": TIMESTAMP,
    "sent_at": TIMESTAMP,
    "expires_at": TIMESTAMP,
}
FITS = {
    KEY: "an integer, uuid or text key",
    TEXT: "text or varchar",
    STATUS: "text, varchar or an enum holding every mapped status",
    DURATION: "double precision, real, numeric or text",
    TIMESTAMP: "timestamp (with or without time zone)",
}
PROVIDER = "cloudflare"  # the value the video queue selects on


async def check_platform(
    engine: AsyncEngine, schema_map: SchemaMap, *, schema: str | None = None
) -> list[str]:
    """Every way the database at ``engine`` differs from what ``schema_map`` promises
    (``schema``: where the platform's tables live, when not the connection's default)."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: _check(sync, schema_map, schema))


def _check(conn: Connection, schema_map: SchemaMap, schema: str | None) -> list[str]:
    inspector = inspect(conn)
    present = set(inspector.get_table_names(schema=schema))
    problems: list[str] = []
    for table_map in schema_map.tables.values():
        if table_map.table not in present:
            problems.append(
                f"{table_map.key}: table {table_map.table!r} does not exist "
                f"(schema map {table_map.key}.table)"
            )
            continue
        columns = {c["name"]: c for c in inspector.get_columns(table_map.table, schema=schema)}
        problems += _check_columns(table_map, columns)
    return problems


def _check_columns(table_map: TableMap, columns: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for ours, theirs in table_map.columns.items():
        if theirs is None:
            continue
        where = f"{table_map.key}.{ours}"
        column = columns.get(theirs)
        if column is None:
            problems.append(
                f"{where}: column {table_map.table}.{theirs} does not exist (schema map "
                f"{table_map.key}.columns.{ours}; the table has {', '.join(sorted(columns))})"
            )
            continue
        kind = KINDS.get(ours, TEXT)
        values = sorted(set(table_map.statuses.values())) if kind == STATUS else []
        if ours == "provider":
            values = [PROVIDER]
        reason = _misfit(column["type"], kind, values)
        if reason is not None:
            problems.append(
                f"{where}: {table_map.table}.{theirs} is {_type_name(column['type'])}, which "
                f"{reason}; {FITS[kind]} would fit"
            )
    return problems


def _misfit(column_type: types.TypeEngine[Any], kind: str, values: Sequence[str]) -> str | None:
    """Why ``column_type`` cannot hold what the jobs write for ``kind``; None when it can."""
    labels = getattr(column_type, "enums", None)
    if labels:  # an enum (Postgres native, or SQLAlchemy's CHECK-constrained one)
        if kind not in (STATUS, TEXT):
            return "is an enum"
        missing = [v for v in values if v not in labels]
        if missing:
            return f"lacks {', '.join(map(repr, missing))} (it holds {', '.join(labels)})"
        return None
    if kind == KEY:
        if isinstance(column_type, types.Integer | types.Uuid | types.String):
            return None
        return "cannot be a row key"
    if kind == TIMESTAMP:
        return None if isinstance(column_type, types.DateTime) else "does not hold a timestamp"
    if kind == DURATION:
        if isinstance(column_type, types.Float | types.String):
            return None
        if isinstance(column_type, types.Numeric) and not isinstance(column_type, types.Integer):
            return None
        return "cannot hold a duration such as 12.5 s"
    if not isinstance(column_type, types.String):
        return "does not hold text"
    length = getattr(column_type, "length", None)
    longest = max((len(v) for v in values), default=0)
    if length is not None and longest > length:
        return f"is too short for {max(values, key=len)!r}"
    return None


def _type_name(column_type: types.TypeEngine[Any]) -> str:
    labels = getattr(column_type, "enums", None)
    name = getattr(column_type, "name", None)
    if labels and name:
        return f"enum {name}"
    try:
        return str(column_type.compile()).lower()
    except Exception:  # a dialect-specific type without a generic rendering
        return type(column_type).__name__.lower()
