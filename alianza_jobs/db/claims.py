"""Leases on queue rows: two runs (or a run and its zombie) never process one row at the same time.

A leased row (of the jobs' ``video_checks`` or ``email_deliveries``) is *claimable* when it is due
(the queue says what due means) and its lease is free: ``locked_until`` is null or has passed. Each
queue claims with a statement of its own (``defs/*/queue_sql.py``) that stamps ``locked_until = now
+ lease`` and ``locked_by = owner`` (the Dagster run id); :func:`write_rows` and
:func:`release_held` here finish or give back only rows this owner still holds. Each function takes
a model or its ``Table``; a row's key is the table's primary key, spelled ``id`` in the changes. How each backend keeps claimers apart: docs/platform.md,
"alianza_jobs.db.claims".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    any_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.db.models import EmailDelivery, VideoCheck
from alianza_jobs.logs import TaskLogger

Leased = type[VideoCheck] | type[EmailDelivery] | Table
# Written in the same transaction as the leased rows, given the keys written (a platform row's
# status beside its bookkeeping): both land, or neither does.
AlsoWrite = Callable[[AsyncConnection, list[Any]], Awaitable[None]]

# Postgres caps a statement at 65,535 bind parameters; stay well below it.
MAX_PARAMS_PER_STATEMENT = 30_000
# Releasing must not hang a cancelled task for ever on a database that stopped answering: past
# this, the lease expiring is what gives the rows back.
RELEASE_TIMEOUT_S = 15.0
_LEASE_COLUMNS = ("locked_until", "locked_by")


def lease_is_free(model: Leased, now: datetime) -> ColumnElement[bool]:
    """Nobody holds the row, or whoever did let the lease pass (crashed, timed out)."""
    table = _table(model)
    return or_(table.c.locked_until.is_(None), table.c.locked_until <= now)


def held_by(model: Leased, owner: str) -> ColumnElement[bool]:
    return _table(model).c.locked_by == owner


async def release_rows(
    engine: AsyncEngine,
    model: Leased,
    *,
    owner: str,
    ids: Collection[Any] | None = None,
    values: Mapping[str, Any] | None = None,
) -> int:
    """Give back rows still held by ``owner`` (all of them, or those in ``ids``); returns how many.

    ``values`` undo what the claim set (``{"status": "pending"}``).
    """
    table = _table(model)
    changes = {**dict.fromkeys(_LEASE_COLUMNS), **(values or {})}
    released = 0
    async with engine.begin() as conn:
        if ids is None:
            result = await conn.execute(
                update(table).where(held_by(table, owner)).values(**changes)
            )
            return int(result.rowcount or 0)
        id_list = sorted(ids)
        for chunk in _chunks(id_list, MAX_PARAMS_PER_STATEMENT):
            result = await conn.execute(
                update(table).where(held_by(table, owner), _key(table).in_(chunk)).values(**changes)
            )
            released += int(result.rowcount or 0)
    return released


async def release_held(
    engine: AsyncEngine, model: Leased, *, owner: str, log: TaskLogger, done: str
) -> int:
    """Give back every row still leased to ``owner``, as it is; returns how many (0 on failure).

    For a run that is ending, or being cancelled, and may hold rows it never saw (a claim that
    committed as the cancellation landed): bounded by :data:`RELEASE_TIMEOUT_S`, and a database
    that does not answer is logged, not raised, since the lease gives the rows back anyway.
    ``done`` is the log message when rows were given back.
    """
    started = time.perf_counter()
    try:
        async with asyncio.timeout(RELEASE_TIMEOUT_S):
            released = await release_rows(engine, model, owner=owner)
    except Exception as exc:
        log.error(
            "Could not give back leased rows; they return to the queue when their lease passes",
            exc,
            table=_table(model).name,
        )
        return 0
    if released:
        log.info(
            done,
            table=_table(model).name,
            released=released,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
    return released


async def write_rows(
    engine: AsyncEngine,
    model: Leased,
    *,
    owner: str,
    changes: Sequence[Mapping[str, Any]],
    release: bool = True,
    also: AlsoWrite | None = None,
) -> list[Any]:
    """Write per-row changes (each a mapping with ``id``) in one transaction; returns the ids written.

    Only rows ``owner`` still holds are written: the ids missing from the answer were lost to an
    expired lease and another run now owns them. With ``release`` (the default) the lease is
    cleared in the same statement; without it the rows stay claimed (e.g. stamping a batch's
    idempotency key before sending it). Rows may change different columns: rows changing the same
    set of columns go in one statement. ``also`` runs in the same transaction, after, with the ids
    written.
    """
    if not changes:
        return []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        if "id" not in change:
            raise ValueError("every change needs the row's `id`")
        extra = dict.fromkeys(_LEASE_COLUMNS) if release else {}
        row = {**change, **extra}
        groups.setdefault(tuple(sorted(k for k in row if k != "id")), []).append(row)
    table = _table(model)
    written: list[Any] = []
    async with engine.begin() as conn:
        bulk_update = (
            _update_from_arrays if conn.dialect.name == "postgresql" else _update_executemany
        )
        for columns, rows in groups.items():
            mine = await _lock_owned(conn, table, owner, rows)
            if mine:
                written += await bulk_update(conn, table, owner, columns, mine)
        if also is not None and written:
            await also(conn, written)
    return sorted(written)


# Which bulk form, measured on the local Postgres 15 writing 10,000 rows (status, duration,
# error_reason, checked_at, cleared lease; alianza_jobs_tests/db/test_claims.py::
# test_bulk_forms_timing prints the numbers):
#   UPDATE ... FROM (VALUES (...), ...) AS v           0.8-1.7 s   (SQLAlchemy compiles 10k tuples,
#                                                                   the server parses them)
#   executemany of a one-row UPDATE (psycopg pipeline)  0.45-0.6 s
#   UPDATE ... FROM unnest(:ids[], :status[], ...)      0.12-0.2 s  (one parameter per column)
# So Postgres gets unnest: fastest, constant statement size. The rows still ours are locked first,
# by primary key, and the UPDATE joins on `id` alone: with `locked_by = owner` in the UPDATE, the
# planner, whose statistics predate the claim (locked_by was null), expected one owned row and
# nested-looped every owned row against the whole page. That cost 650 ms per 770-row page at
# 10,000 claimed rows (auto_explain in the video queue benchmark), 5 ms this way. SQLite has
# neither arrays nor `AS v (id, ...)` column lists and runs in-process, so it uses executemany,
# with the owned ids read first under the write lock BEGIN IMMEDIATE took.
async def _update_from_arrays(
    conn: AsyncConnection,
    table: Table,
    owner: str,
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
) -> list[Any]:
    # `owner` is not filtered on again: _lock_owned kept only the rows it holds, locked by id.
    # A column every row sets to the same value (the cleared lease, `checked_at = now`) is one
    # plain parameter, not an array.
    constant: dict[str, Any] = {
        c: rows[0][c] for c in columns if all(row[c] == rows[0][c] for row in rows)
    }
    key = _key(table)
    keys = ["id", *(c for c in columns if c not in constant)]
    arrays = [
        bindparam(f"v_{k}", [row[k] for row in rows], type_=ARRAY(_column(table, k).type))
        for k in keys
    ]
    data = func.unnest(*arrays).table_valued(*keys).render_derived(name="v")
    stmt = (
        update(table)
        .where(key == data.c.id)  # owned: locked above, in this transaction
        .values({**{k: data.c[k] for k in keys[1:]}, **constant})
        .returning(key)
    )
    return list((await conn.scalars(stmt)).all())


async def update_by_key(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    """Per-row values (each row a mapping with ``id`` and every one of ``columns``) for rows the
    caller already holds: a platform row beside its leased bookkeeping row. The bulk forms of
    :func:`write_rows` (unnest on Postgres), without the ownership filter."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await _update_from_arrays(conn, table, "", tuple(columns), rows)
        return
    stmt = (
        update(table)
        .where(_key(table) == bindparam("_id"))
        .values({c: bindparam(f"_{c}") for c in columns})
    )
    await conn.execute(stmt, [{f"_{k}": v for k, v in row.items()} for row in rows])


async def _lock_owned(
    conn: AsyncConnection, table: Table, owner: str, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows ``owner`` still holds, locked until the transaction ends (FOR UPDATE; on SQLite
    the write lock BEGIN IMMEDIATE took), so the write that follows needs no ownership filter."""
    ids = [row["id"] for row in rows]
    key = _key(table)
    conditions: list[ColumnElement[bool]]
    if conn.dialect.name == "postgresql":
        # One array parameter: a constant statement, and an index scan on the primary key.
        id_array = bindparam("owned_ids", ids, type_=ARRAY(key.type))
        conditions = [key == any_(id_array)]
    else:
        conditions = [key.in_(chunk) for chunk in _chunks(ids, MAX_PARAMS_PER_STATEMENT)]
    owned: set[Any] = set()
    for condition in conditions:
        owned_now = select(key).where(condition, table.c.locked_by == owner)
        owned.update((await conn.scalars(owned_now.with_for_update())).all())
    return [row for row in rows if row["id"] in owned]


async def _update_executemany(
    conn: AsyncConnection,
    table: Table,
    owner: str,
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
) -> list[Any]:
    stmt = (
        update(table)
        .where(_key(table) == bindparam("_id"), table.c.locked_by == owner)
        .values({c: bindparam(f"_{c}") for c in columns})
    )
    await conn.execute(stmt, [{f"_{k}": v for k, v in row.items()} for row in rows])
    return [row["id"] for row in rows]


def _table(model: Leased) -> Table:
    table = model if isinstance(model, Table) else model.__table__
    assert isinstance(table, Table)
    return table


def _key(table: Table) -> Any:
    """The row's key: ``id``, or ``streaming_id`` and the like on the jobs' bookkeeping tables."""
    return next(iter(table.primary_key.columns))


def _column(table: Table, name: str) -> Any:
    return _key(table) if name == "id" else table.c[name]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = [
    "held_by",
    "lease_is_free",
    "release_held",
    "release_rows",
    "update_by_key",
    "write_rows",
]
