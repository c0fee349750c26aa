"""Helpers shared by the data-layer tests and the tests of tasks built on it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import psycopg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db import migrate
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.platform_models import create_stand_in

T = TypeVar("T")


@asynccontextmanager
async def migrated_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` with the platform's stand-in tables and the jobs' schema at head
    (through the real migrations)."""
    engine = create_engine(url)
    try:
        await create_stand_in(engine)
        await migrate.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def drizzle_migrated_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the Postgres ``url`` with the Drizzle-made platform tables and the jobs'
    schema at head: ``migrated_engine`` on the platform's own schema instead of the stand-in."""
    create_drizzle_platform_schema(url)
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


async def count(engine: AsyncEngine, model: type, *where: object) -> int:
    async with engine.connect() as conn:
        stmt = select(func.count()).select_from(model)
        for clause in where:
            stmt = stmt.where(clause)  # type: ignore[arg-type]
        return int(await conn.scalar(stmt) or 0)


async def time_out_when(work: Awaitable[T], ready: Awaitable[object]) -> T:
    """Await ``work`` under an ``asyncio.timeout`` (as the task runtime runs an op) that passes the
    moment ``ready`` completes: the timeout fires at a chosen point of the work, where a short
    fixed timeout races the work to that point and, on a loaded machine, may fire before it."""
    loop = asyncio.get_running_loop()

    async def expire(deadline: asyncio.Timeout) -> None:
        await ready
        deadline.reschedule(loop.time())

    async with asyncio.timeout(None) as deadline:
        expiry = asyncio.ensure_future(expire(deadline))
        try:
            return await work
        finally:
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry  # what went wrong waiting for `ready`, if anything


async def poll(
    check: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.1
) -> tuple[T, float]:
    """Call ``check`` until it returns something truthy or ``timeout`` passes; (value, elapsed)."""
    started = time.monotonic()
    while True:
        value = await check()
        elapsed = time.monotonic() - started
        if value or elapsed > timeout:
            return value, elapsed
        await asyncio.sleep(interval)


DRIZZLE_SCHEMA_MAP = Path(__file__).with_name("drizzle") / "schema-map.yaml"
DRIZZLE_SQL_DIR = Path(__file__).parent / "drizzle" / "generated"


def drizzle_platform_statements() -> list[str]:
    """The statements drizzle-kit generated for the platform schema (db/drizzle/schema.ts), in
    order: what the platform's own ORM creates before the jobs ever run."""
    statements: list[str] = []
    for path in sorted(DRIZZLE_SQL_DIR.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        statements += [s.strip() for s in text.split("--> statement-breakpoint") if s.strip()]
    return statements


def create_drizzle_platform_schema(url: str) -> None:
    """Create the Drizzle platform tables in the (empty) Postgres database at ``url``."""
    with psycopg.connect(url, autocommit=False) as conn:
        for statement in drizzle_platform_statements():
            conn.execute(statement.encode("utf-8"))
        conn.commit()
