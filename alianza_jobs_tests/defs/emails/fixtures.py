"""Shared set-up for the email task tests: a migrated database, the Resend emulator in-process,
queue rows, and read-backs of the database and the emulator's inbox.

A queued email is a platform ``email_queue`` row (the stand-in :class:`EmailQueue`) and, once the
task has claimed it, the jobs' ``email_deliveries`` row (:class:`EmailDelivery`, keyed by the
platform id as text) with our state and bookkeeping. Ids are ``str`` here as in the package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import DeadLetter, EmailDelivery
from alianza_jobs.db.platform_models import EmailQueue
from alianza_jobs.db.types import utcnow
from alianza_jobs.emulators import EMULATOR_API_KEY, ResendEmulator
from alianza_jobs.resources import AppConfig, Database, EmulatedResendEmail

EMAIL_FROM = "Alianza <jobs@alianza.test>"
UNFINISHED = ("pending", "sending", "failed")
QUEUE: Table = EmailQueue.__table__  # type: ignore[assignment]
DELIVERIES: Table = EmailDelivery.__table__  # type: ignore[assignment]

PLATFORM_DEFAULTS: dict[str, Any] = {
    "from_address": None,
    "html": None,
    "text": None,
    "status": "pending",
    "sent_at": None,
    "last_error": None,
}
# Keys only our delivery row holds: a row that sets one gets a delivery, as if claimed before.
# (`last_error` and `sent_at` are on both rows: the task writes them to both.)
DELIVERY_ONLY = (
    "attempts",
    "next_attempt_at",
    "idempotency_key",
    "provider_message_id",
    "locked_by",
    "locked_until",
    "last_error",
)
DELIVERY_DEFAULTS: dict[str, Any] = {
    "attempts": 0,
    "idempotency_key": None,
    "provider_message_id": None,
    "locked_by": None,
    "locked_until": None,
    "last_error": None,
    "sent_at": None,
}


# Named fixtures (`name=`): a test module imports the function, and its parameter `emulator` is
# the fixture, not a shadowed import. (`engine` and `state_dir` come from the root conftest.)
@pytest.fixture(name="emulator")
def emulator_fixture(state_dir: Path) -> ResendEmulator:
    return ResendEmulator(state_dir)


def resources(url: str, state_dir: Path, **resend: Any) -> dict[str, Any]:
    """The op's resources: the database, Resend served in-process by the emulator, EMAIL_FROM."""
    return {
        "database": Database(url=url),
        "resend": EmulatedResendEmail(
            api_key=EMULATOR_API_KEY, emulator_state_dir=str(state_dir), **resend
        ),
        "app": AppConfig(email_from=EMAIL_FROM),
    }


def email(i: int, **overrides: Any) -> dict[str, Any]:
    """A valid queue row; every one has its own recipient and subject (a duplicate shows).

    Besides the platform's columns a row may set ``platform_status`` (what the platform's row
    holds, when it differs from our ``status``) and the delivery's keys (:data:`DELIVERY_ONLY`).
    """
    return {
        "to_address": f"user{i}@example.com",
        "subject": f"Order {i} confirmed",
        "html": f"<p>Order {i}</p>",
        "text": f"Order {i}",
        "status": "pending",
        **overrides,
    }


def needs_delivery(row: Mapping[str, Any]) -> bool:
    status = row.get("status", PLATFORM_DEFAULTS["status"])
    return any(k in row for k in DELIVERY_ONLY) or row.get("platform_status", status) != status


async def add_emails(engine: AsyncEngine, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Insert platform rows (bulk; every row gets the same keys); returns their ids in order.

    A row that sets a delivery key, or a ``platform_status`` other than its ``status``, also gets
    an ``email_deliveries`` row with our ``status`` and those keys (due now unless it says when).
    """
    platform = []
    for row in rows:
        values = {**PLATFORM_DEFAULTS, **{k: v for k, v in row.items() if k in QUEUE.c}}
        values["status"] = row.get("platform_status", values["status"])
        platform.append(values)
    ids: list[str] = []
    async with engine.begin() as conn:
        for start in range(0, len(platform), 2000):
            result = await conn.execute(
                insert(QUEUE).returning(QUEUE.c.id, sort_by_parameter_order=True),
                platform[start : start + 2000],
            )
            ids += [str(i) for i in result.scalars()]
        now = utcnow()
        deliveries = [
            {
                **DELIVERY_DEFAULTS,
                "next_attempt_at": now,
                **{
                    k: v for k, v in row.items() if k in DELIVERY_DEFAULTS or k == "next_attempt_at"
                },
                "status": row.get("status", PLATFORM_DEFAULTS["status"]),
                "email_id": row_id,
            }
            for row_id, row in zip(ids, rows, strict=True)
            if needs_delivery(row)
        ]
        for start in range(0, len(deliveries), 2000):
            await conn.execute(insert(DELIVERIES), deliveries[start : start + 2000])
    return ids


@dataclass(frozen=True)
class Row:
    """A platform row merged with its delivery: our state and bookkeeping (the delivery's, or
    what a row without one reads as), and what the platform's own row holds (``platform_*``)."""

    id: str
    to_address: str
    subject: str
    status: str
    attempts: int
    next_attempt_at: datetime | None  # None: no delivery yet, due now
    locked_until: datetime | None
    locked_by: str | None
    last_error: str | None
    provider_message_id: str | None
    sent_at: datetime | None
    idempotency_key: str | None
    has_delivery: bool
    platform_status: str
    platform_sent_at: datetime | None
    platform_last_error: str | None


def merged(platform: Mapping[str, Any], delivery: Mapping[str, Any] | None) -> Row:
    """``platform`` keyed by the jobs' column names (id as text); ``delivery`` its row, if any."""
    if delivery is None:
        ours: Mapping[str, Any] = {
            **DELIVERY_DEFAULTS,
            "status": platform["status"],
            "next_attempt_at": None,
            "last_error": platform.get("last_error"),
            "sent_at": platform.get("sent_at"),
        }
    else:
        ours = delivery
    return Row(
        id=str(platform["id"]),
        to_address=platform["to_address"],
        subject=platform["subject"],
        status=ours["status"],
        attempts=ours["attempts"],
        next_attempt_at=ours["next_attempt_at"],
        locked_until=ours["locked_until"],
        locked_by=ours["locked_by"],
        last_error=ours["last_error"],
        provider_message_id=ours["provider_message_id"],
        sent_at=ours["sent_at"],
        idempotency_key=ours["idempotency_key"],
        has_delivery=delivery is not None,
        platform_status=platform["status"],
        platform_sent_at=platform.get("sent_at"),
        platform_last_error=platform.get("last_error"),
    )


async def deliveries_by_id(engine: AsyncEngine) -> dict[str, Mapping[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(DELIVERIES))
        return {row.email_id: dict(row._mapping) for row in result}


async def rows_by_id(engine: AsyncEngine) -> dict[str, Row]:
    """Every stand-in platform row with its delivery, by id, in id order."""
    async with engine.connect() as conn:
        platform = [
            dict(r._mapping) for r in await conn.execute(select(QUEUE).order_by(QUEUE.c.id))
        ]
    deliveries = await deliveries_by_id(engine)
    return {str(p["id"]): merged(p, deliveries.get(str(p["id"]))) for p in platform}


async def dead_letters(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(select(DeadLetter).order_by(DeadLetter.id))
        return list(result.all())


def metadata_of(output: Any) -> dict[str, Any]:
    return {key: value.value for key, value in output.metadata.items()}


def later(seconds: float) -> Any:
    """A clock ``seconds`` ahead of the real one (for `now_utc`): leases and backoffs pass."""
    return lambda: utcnow() + timedelta(seconds=seconds)


def run_async(coro: Any) -> Any:
    """execute_in_process runs the async op on an event loop of its own, so the job tests are
    plain functions and do their database set-up and checks through asyncio.run."""
    return asyncio.run(coro)
