"""Column types that behave the same on SQLite and Postgres.

SQLite has no time zones: a ``DateTime(timezone=True)`` there stores whatever it is given and hands
back naive values, while Postgres hands back aware ones in the session's zone. Comparing the two in
Python fails (``TypeError: can't compare offset-naive and offset-aware datetimes``), so every
timestamp column uses :class:`UTCDateTime`: aware UTC in, aware UTC out, naive UTC on disk where the
backend has no zone (all stored values share one format, so SQLite's text comparison orders them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC in Python on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            # Guessing the zone of a naive value is how off-by-hours bugs get written to disk.
            raise ValueError(f"naive datetime {value.isoformat()} given: use an aware UTC value")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
BigIntPK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")
JSONDocument: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")

__all__ = ["BigIntPK", "JSONDocument", "UTCDateTime", "utcnow"]
