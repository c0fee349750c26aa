"""Helpers shared by the data-layer tests and the tests of tasks built on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db import migrate
from alianza_jobs.db.engine import create_engine

T = TypeVar("T")


@asynccontextmanager
async def migrated_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` with the schema at head (through the real migrations)."""
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
