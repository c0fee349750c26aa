"""Shared set-up for the email task tests: a migrated database, the Resend emulator in-process,
queue rows, and read-backs of the database and the emulator's inbox."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import DeadLetter, EmailQueue
from alianza_jobs.db.types import utcnow
from alianza_jobs.emulators import EMULATOR_API_KEY, ResendEmulator
from alianza_jobs.resources import AppConfig, Database, EmulatedResendEmail

EMAIL_FROM = "Alianza <jobs@alianza.test>"
UNFINISHED = ("pending", "sending", "failed")


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
    """A valid queue row; every one has its own recipient and subject (a duplicate shows)."""
    return {
        "to_address": f"user{i}@example.com",
        "from_address": None,
        "subject": f"Order {i} confirmed",
        "html": f"<p>Order {i}</p>",
        "text": f"Order {i}",
        "status": "pending",
        "next_attempt_at": utcnow() - timedelta(seconds=1),
        # Every row names every column a test may set: a multi-row INSERT needs one shape.
        "attempts": 0,
        "idempotency_key": None,
        "last_error": None,
        "provider_message_id": None,
        "sent_at": None,
        **overrides,
    }


async def add_emails(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> list[int]:
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(EmailQueue).returning(EmailQueue.id, sort_by_parameter_order=True), list(rows)
        )
        return list(result.scalars())


@dataclass(frozen=True)
class Row:
    id: int
    to_address: str
    subject: str
    status: str
    attempts: int
    next_attempt_at: datetime
    locked_until: datetime | None
    locked_by: str | None
    last_error: str | None
    provider_message_id: str | None
    sent_at: datetime | None
    idempotency_key: str | None


async def rows_by_id(engine: AsyncEngine) -> dict[int, Row]:
    columns = [getattr(EmailQueue, f) for f in Row.__dataclass_fields__]
    async with engine.connect() as conn:
        result = await conn.execute(select(*columns).order_by(EmailQueue.id))
        return {r.id: Row(**r._asdict()) for r in result}


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
