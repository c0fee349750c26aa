"""The email queue's SQL: claiming due emails, stale groups, and writing a plan with its dead letters.

A queued email is a platform ``email_queue`` row (its recipient, subject and bodies); what the
platform's row has no column for lives in the jobs' ``email_deliveries`` (keyed by the row's id as
text): our state, with ``sending`` and ``dead``, the attempts, the next attempt's time, the Resend
batch's Idempotency-Key and message id, and the lease. The delivery row is made by the first claim.
The platform row gets only what the TypeScript package wrote: its status (through the schema map,
so ``sending`` may stay ``pending`` there and ``dead`` become ``failed``), and its sent time and
error where the platform has those columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.db.claims import lease_is_free
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import DeadLetter, EmailDelivery, EmailStatus
from alianza_jobs.db.platform_tables import PlatformTables, key_as_text, keyed_by
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails.batches import QueuedEmail
from alianza_jobs.defs.emails.plans import Plan
from alianza_jobs.logs import TaskLogger

UNFINISHED = (EmailStatus.PENDING.value, EmailStatus.SENDING.value, EmailStatus.FAILED.value)
DELIVERIES: Table = EmailDelivery.__table__  # type: ignore[assignment]
# Each plan key that the platform row gets too, by our column name there.
PLATFORM_COLUMNS = ("status", "sent_at", "last_error")
CONTENT = ("to_address", "from_address", "subject", "html", "text")


def unfinished_on_platform(tables: PlatformTables) -> ColumnElement[bool]:
    """Platform rows whose status may still stand for an unfinished delivery of ours."""
    values = sorted({tables.status("email_queue", state) for state in UNFINISHED})
    return tables.email_queue.c.status.in_(values)


def fresh_due(now: datetime) -> ColumnElement[bool]:
    """Delivery rows due that belong to no group."""
    return and_(
        # `sending` without a key was never sent by this task (it stamps both at once): a row
        # written so by someone else is taken as fresh rather than left stuck.
        DELIVERIES.c.status.in_(UNFINISHED),
        DELIVERIES.c.idempotency_key.is_(None),
        DELIVERIES.c.next_attempt_at <= now,
        lease_is_free(DELIVERIES, now),
    )


def group_rows(key: str, emails: Table) -> ColumnElement[bool]:
    """Every unfinished row of the group sent under ``key``."""
    return and_(
        DELIVERIES.c.idempotency_key == key,
        DELIVERIES.c.status.in_(UNFINISHED),
        on_platform(emails),
    )


def on_platform(emails: Table) -> ColumnElement[bool]:
    # The platform may delete a queued email whose group awaits a retry: no claim can read its
    # delivery back, so counted in the group it would keep the rest waiting forever.
    return select(emails.c.id).where(keyed_by(emails, DELIVERIES.c.email_id)).exists()


def count_due(conn: Connection, tables: PlatformTables, *, now: datetime, cap: int) -> int:
    """How many emails a run would find due now, counting no further than ``cap`` (the work
    probe's question, on a synchronous connection): never claimed, or claimed, unfinished, due
    and with a free lease (fresh ones and groups awaiting their retry alike)."""
    e = tables.email_queue
    due = (
        select(literal(1))
        .select_from(e.outerjoin(DELIVERIES, DELIVERIES.c.email_id == key_as_text(e)))
        .where(
            unfinished_on_platform(tables),
            or_(
                DELIVERIES.c.email_id.is_(None),
                and_(
                    DELIVERIES.c.status.in_(UNFINISHED),
                    DELIVERIES.c.next_attempt_at <= now,
                    lease_is_free(DELIVERIES, now),
                ),
            ),
        )
        .limit(cap)
        .subquery()
    )
    return int(conn.scalar(select(func.count()).select_from(due)) or 0)


async def claim_fresh(
    engine: AsyncEngine,
    tables: PlatformTables,
    *,
    owner: str,
    lease: timedelta,
    limit: int,
    now: datetime,
) -> list[QueuedEmail]:
    """Lease up to ``limit`` due emails of no group, oldest due first; returns them by id.

    An INSERT ... SELECT ... ON CONFLICT: an email never claimed gets its delivery row, a due one
    the new lease, one someone holds is left alone (the conflict's WHERE sees the lease taken once
    the other claim commits). On Postgres the candidates' platform rows are locked SKIP LOCKED
    first, by a statement of its own, for the claim's few milliseconds, so concurrent workers take
    different emails instead of queueing behind each other for the same ones.
    """
    if limit <= 0:
        return []
    e = tables.email_queue
    until = now + lease
    source = e.outerjoin(DELIVERIES, DELIVERIES.c.email_id == key_as_text(e))
    due = (unfinished_on_platform(tables), or_(DELIVERIES.c.email_id.is_(None), fresh_due(now)))
    oldest_first = (DELIVERIES.c.next_attempt_at.nulls_first(), e.c.created_at, e.c.id)
    columns = (
        key_as_text(e),
        literal(EmailStatus.PENDING.value, DELIVERIES.c.status.type),
        literal(now, DELIVERIES.c.next_attempt_at.type),
        literal(until, DELIVERIES.c.locked_until.type),
        literal(owner, DELIVERIES.c.locked_by.type),
    )
    candidates = select(*columns).select_from(source).where(*due).order_by(*oldest_first)
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    async with engine.begin() as conn:
        if dialect is postgresql:
            # Lock first, claim in a second statement. One statement reads the deliveries as of
            # before it waited for the locks: an email another worker claimed and released the
            # lock of meanwhile still looks unclaimed, so the insert's conflict waits on that
            # worker's delivery row, which its write (deliveries, then the email's status) holds
            # while waiting for the email this claim locked: a deadlock (seen with 8 workers).
            # The second statement sees every claim that committed before the locks were ours.
            locked = (
                select(e.c.id)
                .select_from(source)
                .where(*due)
                .order_by(*oldest_first)
                .limit(limit)
                .with_for_update(of=e, skip_locked=True)
            )
            picked = list((await conn.scalars(locked)).all())
            if not picked:
                return []
            candidates = candidates.where(e.c.id.in_(picked))
        else:
            # SQLite parses `SELECT ... WHERE x ON CONFLICT` as a join constraint without it.
            candidates = candidates.limit(limit).where(true())
        stmt = dialect.insert(DELIVERIES).from_select(
            ["email_id", "status", "next_attempt_at", "locked_until", "locked_by"], candidates
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[DELIVERIES.c.email_id],
            set_={
                "locked_until": stmt.excluded.locked_until,
                "locked_by": stmt.excluded.locked_by,
            },
            where=fresh_due(now),
        ).returning(DELIVERIES.c.email_id)
        ids = list((await conn.scalars(stmt)).all())
        return await _read_claimed(conn, tables, ids)


async def claim_group(
    engine: AsyncEngine,
    tables: PlatformTables,
    key: str,
    *,
    owner: str,
    lease: timedelta,
    limit: int,
    now: datetime,
) -> list[QueuedEmail]:
    """Lease the free rows of the group sent under ``key``; returns them by id."""
    ids_free = (
        select(DELIVERIES.c.email_id)
        .where(group_rows(key, tables.email_queue), lease_is_free(DELIVERIES, now))
        .order_by(DELIVERIES.c.email_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(DELIVERIES)
        .where(DELIVERIES.c.email_id.in_(ids_free))
        .values(locked_until=now + lease, locked_by=owner)
        .returning(DELIVERIES.c.email_id)
    )
    async with engine.begin() as conn:
        ids = list((await conn.scalars(stmt)).all())
        return await _read_claimed(conn, tables, ids)


async def _read_claimed(
    conn: AsyncConnection, tables: PlatformTables, ids: Sequence[str]
) -> list[QueuedEmail]:
    if not ids:
        return []
    e = tables.email_queue
    content = [e.c[name] if name in e.c else literal(None).label(name) for name in CONTENT]
    stmt = (
        select(
            DELIVERIES.c.email_id,
            *content,
            DELIVERIES.c.status,
            DELIVERIES.c.attempts,
            DELIVERIES.c.last_error,
            DELIVERIES.c.idempotency_key,
        )
        .select_from(DELIVERIES.join(e, keyed_by(e, DELIVERIES.c.email_id)))
        .where(DELIVERIES.c.email_id.in_(list(ids)))
    )
    rows = [
        QueuedEmail(
            id=r.email_id,
            to_address=r.to_address,
            from_address=r.from_address,
            subject=r.subject,
            html=r.html,
            text=r.text,
            status=r.status,
            attempts=r.attempts,
            last_error=r.last_error,
            idempotency_key=r.idempotency_key,
        )
        for r in await conn.execute(stmt)
    ]
    rows.sort(key=lambda row: row.id)
    return rows


async def stale_group_key(
    engine: AsyncEngine, tables: PlatformTables, now: datetime, skipped: set[str]
) -> str | None:
    """The key of the longest-due group no run holds, except those in ``skipped``."""
    d = DELIVERIES.c
    abandoned_or_due = or_(
        # `sending` with a free lease: its run crashed or was cut off mid-request.
        d.status == EmailStatus.SENDING.value,
        and_(
            d.status.in_((EmailStatus.FAILED.value, EmailStatus.PENDING.value)),
            d.next_attempt_at <= now,
        ),
    )
    stmt = (
        select(d.idempotency_key)
        .where(
            d.idempotency_key.is_not(None),
            abandoned_or_due,
            lease_is_free(DELIVERIES, now),
            on_platform(tables.email_queue),
        )
        .order_by(d.next_attempt_at, d.email_id)
        .limit(1)
    )
    if skipped:
        stmt = stmt.where(d.idempotency_key.not_in(sorted(skipped)))
    async with read_only(engine).connect() as conn:
        key: str | None = await conn.scalar(stmt)
    return key


async def group_complete(
    engine: AsyncEngine, tables: PlatformTables, key: str, rows: Sequence[QueuedEmail]
) -> bool:
    """Did we get every unfinished row of the group? (Concurrent claimers may split one.)"""
    stmt = (
        select(func.count())
        .select_from(DELIVERIES)
        .where(
            group_rows(key, tables.email_queue), DELIVERIES.c.email_id.not_in([r.id for r in rows])
        )
    )
    async with read_only(engine).connect() as conn:
        others = int(await conn.scalar(stmt) or 0)
    return others == 0


async def write_plan(
    engine: AsyncEngine, tables: PlatformTables, owner: str, plan: Plan, *, log: TaskLogger
) -> set[str]:
    """Apply ``plan`` to the rows ``owner`` still holds, with its dead letters, in one transaction.

    Returns the ids written. Our columns go to ``email_deliveries``, the status (and sent time and
    error, where mapped) to the platform row. Not :func:`alianza_jobs.db.claims.write_rows`: a row
    must not go ``dead`` without its dead letter (nor the reverse), so both are written here under
    one commit.
    """
    if not plan.changes:
        return set()
    ids = sorted(set(plan.ids))
    d = DELIVERIES.c
    async with engine.begin() as conn:
        owned_now = select(d.email_id).where(d.email_id.in_(ids), d.locked_by == owner)
        # FOR UPDATE keeps the answer true until our UPDATE (on SQLite the write lock does).
        owned = set((await conn.scalars(owned_now.with_for_update())).all())
        now = utcnow()
        ours: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        theirs: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        e = tables.email_queue
        for change in plan.changes:
            if change["id"] not in owned:
                continue
            mine = {k: v for k, v in change.items() if k != "id"}
            ours.setdefault(tuple(sorted(mine)), []).append({"id": change["id"], **mine})
            platform = {k: v for k, v in mine.items() if k in PLATFORM_COLUMNS and k in e.c}
            if "status" in platform:
                platform["status"] = tables.status("email_queue", platform["status"])
            if platform:
                key = tuple(sorted(platform))
                theirs.setdefault(key, []).append({"id": change["id"], **platform})
        for columns, rows in ours.items():
            await _executemany(conn, DELIVERIES, d.email_id, columns, rows, now, owner)
        for columns, rows in theirs.items():
            await _executemany(conn, e, e.c.id, columns, rows, None, None)
        # dead_letters.source_id is text: platform keys may be integers or uuids.
        letters = [d for d in plan.dead_letters if d["source_id"] in owned]
        if letters:
            await conn.execute(insert(DeadLetter), letters)
    lost = set(ids) - owned
    if lost:
        log.warning(
            "Lease lost before the write: another run owns these rows now",
            lost=len(lost),
            lost_ids=",".join(sorted(lost)[:20]),
        )
    return owned


async def _executemany(
    conn: AsyncConnection,
    table: Table,
    key: Any,
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
    now: datetime | None,
    owner: str | None,
) -> None:
    values: dict[str, Any] = {c: bindparam(f"p_{c}", type_=table.c[c].type) for c in columns}
    if now is not None and "updated_at" not in values:
        values["updated_at"] = now
    where = [key == bindparam("p_id", type_=key.type)]
    if owner is not None:
        where.append(table.c.locked_by == owner)
    stmt = update(table).where(*where).values(values)
    await conn.execute(stmt, [{f"p_{k}": v for k, v in row.items()} for row in rows])
