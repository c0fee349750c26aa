"""The email queue's SQL: which rows are due, stale groups, and writing a plan with its dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.db.claims import lease_is_free
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import DeadLetter, EmailQueue, EmailStatus
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails.plans import Plan
from alianza_jobs.logs import TaskLogger

UNFINISHED = (EmailStatus.PENDING.value, EmailStatus.SENDING.value, EmailStatus.FAILED.value)
_TABLE = EmailQueue.__table__
assert isinstance(_TABLE, Table)
TABLE: Table = _TABLE


def fresh_due(now: datetime) -> ColumnElement[bool]:
    """Due rows that belong to no group."""
    return and_(
        # `sending` without a key was never sent by this task (it stamps both at once): a row
        # written so by someone else is taken as fresh rather than left stuck.
        EmailQueue.status.in_(UNFINISHED),
        EmailQueue.idempotency_key.is_(None),
        EmailQueue.next_attempt_at <= now,
    )


def group_rows(key: str) -> ColumnElement[bool]:
    """Every unfinished row of the group sent under ``key``."""
    return and_(EmailQueue.idempotency_key == key, EmailQueue.status.in_(UNFINISHED))


async def stale_group_key(engine: AsyncEngine, now: datetime, skipped: set[str]) -> str | None:
    """The key of the longest-due group no run holds, except those in ``skipped``."""
    abandoned_or_due = or_(
        # `sending` with a free lease: its run crashed or was cut off mid-request.
        EmailQueue.status == EmailStatus.SENDING.value,
        and_(
            EmailQueue.status.in_((EmailStatus.FAILED.value, EmailStatus.PENDING.value)),
            EmailQueue.next_attempt_at <= now,
        ),
    )
    stmt = (
        select(EmailQueue.idempotency_key)
        .where(
            EmailQueue.idempotency_key.is_not(None),
            abandoned_or_due,
            lease_is_free(EmailQueue, now),
        )
        .order_by(EmailQueue.next_attempt_at, EmailQueue.id)
        .limit(1)
    )
    if skipped:
        stmt = stmt.where(EmailQueue.idempotency_key.not_in(sorted(skipped)))
    async with read_only(engine).connect() as conn:
        key: str | None = await conn.scalar(stmt)
    return key


async def group_complete(engine: AsyncEngine, key: str, rows: Sequence[EmailQueue]) -> bool:
    """Did we get every unfinished row of the group? (Concurrent claimers may split one.)"""
    stmt = (
        select(func.count())
        .select_from(EmailQueue)
        .where(
            EmailQueue.idempotency_key == key,
            EmailQueue.status.in_(UNFINISHED),
            EmailQueue.id.not_in([r.id for r in rows]),
        )
    )
    async with read_only(engine).connect() as conn:
        others = int(await conn.scalar(stmt) or 0)
    return others == 0


async def write_plan(engine: AsyncEngine, owner: str, plan: Plan, *, log: TaskLogger) -> set[int]:
    """Apply ``plan`` to the rows ``owner`` still holds, with its dead letters, in one transaction.

    Returns the ids written. Not :func:`alianza_jobs.db.claims.write_rows`: that one opens its own
    transaction for the row changes alone, and a row must not go ``dead`` without its dead letter
    (nor the reverse), so both are written here under one commit.
    """
    if not plan.changes:
        return set()
    ids = sorted(set(plan.ids))
    async with engine.begin() as conn:
        owned_now = select(TABLE.c.id).where(TABLE.c.id.in_(ids), TABLE.c.locked_by == owner)
        # FOR UPDATE keeps the answer true until our UPDATE (on SQLite the write lock does).
        owned = set((await conn.scalars(owned_now.with_for_update())).all())
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for change in plan.changes:
            if change["id"] in owned:
                key = tuple(sorted(k for k in change if k != "id"))
                groups.setdefault(key, []).append(change)
        now = utcnow()
        for columns, rows in groups.items():
            await _executemany_update(conn, owner, columns, rows, now)
        letters = [d for d in plan.dead_letters if d["source_id"] in owned]
        if letters:
            await conn.execute(insert(DeadLetter), letters)
    lost = set(ids) - owned
    if lost:
        log.warning(
            "Lease lost before the write: another run owns these rows now",
            lost=len(lost),
            lost_ids=",".join(str(i) for i in sorted(lost)[:20]),
        )
    return owned


async def _executemany_update(
    conn: AsyncConnection,
    owner: str,
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
    now: datetime,
) -> None:
    values: dict[str, Any] = {c: bindparam(f"p_{c}", type_=TABLE.c[c].type) for c in columns}
    if "updated_at" not in values:
        values["updated_at"] = now
    stmt = (
        update(TABLE)
        .where(TABLE.c.id == bindparam("p_id"), TABLE.c.locked_by == owner)
        .values(values)
    )
    await conn.execute(stmt, [{f"p_{k}": v for k, v in row.items()} for row in rows])
