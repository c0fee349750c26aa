"""The Stream webhook deliveries' statements: the receiver's idempotent store, the sensor's count
of what is waiting, and the apply job's read, mark and prune.

A delivery is stored as it arrived, keyed by its body's SHA-256 (Stream re-sends an unanswered
delivery with the same body: a delivery stored before a crash and sent again is stored once),
and stays pending (``applied_at`` null) until ``apply_stream_webhooks`` has settled its video.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import WebhookDelivery

DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class PendingDelivery:
    id: int
    uid: str
    payload: Any


async def store_delivery(
    engine: AsyncEngine,
    *,
    body_sha256: str,
    uid: str,
    state: str | None,
    payload: Any,
    now: datetime,
) -> bool:
    """Store one verified delivery; False when the same delivery (same body) was stored before.

    Committed before the receiver answers: what Stream was told it delivered is on disk."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(DELIVERIES)
        .values(
            body_sha256=body_sha256,
            uid=uid,
            state=state,
            payload=payload,
            received_at=now,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[DELIVERIES.c.body_sha256])
        .returning(DELIVERIES.c.id)
    )
    async with engine.begin() as conn:
        return (await conn.scalar(stmt)) is not None


def count_pending(conn: Connection, *, cap: int) -> int:
    """Deliveries not yet applied, counting no further than ``cap`` (the sensor's question)."""
    rows = (
        select(literal(1))
        .select_from(DELIVERIES)
        .where(DELIVERIES.c.applied_at.is_(None))
        .limit(cap)
        .subquery()
    )
    return int(conn.scalar(select(func.count()).select_from(rows)) or 0)


async def pending_deliveries(engine: AsyncEngine, *, limit: int) -> list[PendingDelivery]:
    """The oldest ``limit`` deliveries not yet applied, oldest first."""
    stmt = (
        select(DELIVERIES.c.id, DELIVERIES.c.uid, DELIVERIES.c.payload)
        .where(DELIVERIES.c.applied_at.is_(None))
        .order_by(DELIVERIES.c.id)
        .limit(limit)
    )
    async with read_only(engine).connect() as conn:
        return [PendingDelivery(r.id, r.uid, r.payload) for r in (await conn.execute(stmt)).all()]


async def mark_applied(engine: AsyncEngine, outcomes: Mapping[int, str], *, now: datetime) -> None:
    """Record what applying each delivery did; it is no longer pending."""
    if not outcomes:
        return
    stmt = (
        update(DELIVERIES)
        .where(DELIVERIES.c.id == bindparam("delivery_id"))
        .values(applied_at=now, updated_at=now, outcome=bindparam("delivery_outcome"))
    )
    rows = [{"delivery_id": k, "delivery_outcome": v} for k, v in outcomes.items()]
    async with engine.begin() as conn:
        await conn.execute(stmt, rows)


async def prune_applied(engine: AsyncEngine, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` deliveries applied before ``before``: the table does not grow forever."""
    oldest = (
        select(DELIVERIES.c.id)
        .where(DELIVERIES.c.applied_at < before)
        .order_by(DELIVERIES.c.applied_at)
        .limit(limit)
    )
    async with engine.begin() as conn:
        result = await conn.execute(delete(DELIVERIES).where(DELIVERIES.c.id.in_(oldest)))
        return int(result.rowcount or 0)


async def table_ready(engine: AsyncEngine) -> None:
    """Raise when the deliveries' table is missing (``alianza-jobs db upgrade`` makes it)."""
    async with read_only(engine).connect() as conn:
        await conn.execute(select(DELIVERIES.c.id).limit(0))


__all__: Sequence[str] = [
    "DELIVERIES",
    "PendingDelivery",
    "count_pending",
    "mark_applied",
    "pending_deliveries",
    "prune_applied",
    "store_delivery",
    "table_ready",
]
