"""Circuit-breaker state in the ``circuit_breakers`` table: shared by every run and process.

A breaker that forgot its state at the end of each run would let every tick hammer a dead API
again; the app database is the one store every run, on every machine, already shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import CircuitBreaker
from alianza_jobs.db.types import utcnow


class BreakerValues(Protocol):
    """What is saved per service (the API clients' breaker state has these attributes)."""

    @property
    def state(self) -> str: ...

    @property
    def consecutive_failures(self) -> int: ...

    @property
    def opened_until(self) -> datetime | None: ...

    @property
    def last_error(self) -> str | None: ...


@dataclass(frozen=True)
class BreakerRow:
    """One row of ``circuit_breakers`` as plain values (service is the key)."""

    state: str
    consecutive_failures: int
    opened_until: datetime | None
    last_error: str | None


class DatabaseBreakerStore:
    """Loads and saves breaker state by service; satisfies the clients' ``BreakerStore``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self, service: str) -> BreakerRow | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(CircuitBreaker).where(CircuitBreaker.service == service))
            ).first()
        if row is None:
            return None
        return BreakerRow(
            state=row.state,
            consecutive_failures=row.consecutive_failures,
            opened_until=row.opened_until,
            last_error=row.last_error,
        )

    async def save(self, service: str, state: BreakerValues) -> None:
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
