"""Circuit-breaker state in the ``circuit_breakers`` table: shared by every run and process.

A breaker that forgot its state at the end of each run would let every tick hammer a dead API
again; the app database is the one store every run, on every machine, already shares. This is the
clients' ``BreakerStore`` on that table; it lives here, where both the clients and the database
may be imported, so neither of them needs to know the other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.breaker import BreakerState
from alianza_jobs.db.models import CircuitBreaker
from alianza_jobs.db.types import utcnow


class DatabaseBreakerStore:
    """Loads and saves breaker state by service."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self, service: str) -> BreakerState | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(CircuitBreaker).where(CircuitBreaker.service == service))
            ).first()
        return None if row is None else BreakerState.of(row)

    async def save(self, service: str, state: BreakerState) -> None:
        values: dict[str, Any] = {
            "state": state.state,
            "consecutive_failures": state.consecutive_failures,
            "opened_until": state.opened_until,
            "last_error": state.last_error[:2000] if state.last_error else None,
            "updated_at": utcnow(),
        }
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        upsert = dialect.insert(CircuitBreaker).values(service=service, **values)
        upsert = upsert.on_conflict_do_update(index_elements=["service"], set_=values)
        async with self.engine.begin() as conn:
            await conn.execute(upsert)
