"""Column types that behave the same on SQLite and Postgres.

SQLite has no time zones: a ``DateTime(timezone=True)`` there stores whatever it is given and hands
back naive values, while Postgres hands back aware ones in the session's zone. Comparing the two in
Python fails (``TypeError: can't compare offset-naive and offset-aware datetimes``), so every
timestamp column uses :class:`UTCDateTime`: aware UTC in, aware UTC out, naive UTC on disk where the
backend has no zone (all stored values share one format, so SQLite's text comparison orders them).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer, Text, Uuid
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


class NaiveUTCDateTime(TypeDecorator[datetime]):
    """A ``timestamp without time zone`` column (as an ORM such as Drizzle makes them): aware UTC
    in Python, naive UTC on disk, which is what such a column means when written by a server
    running in UTC."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        aware = UTCDateTime().process_bind_param(value, dialect)
        return None if aware is None else aware.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return UTCDateTime().process_result_value(value, dialect)


class DurationText(TypeDecorator[float]):
    """A duration in seconds kept as text, as the TypeScript package wrote it
    (``duration?.toString()``): 12.0 is "12", 12.5 is "12.5". Read back as a float."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        text = repr(float(value))
        return text[:-2] if text.endswith(".0") else text

    def process_result_value(self, value: str | None, dialect: Dialect) -> float | None:
        if value is None or not value.strip():
            return None
        try:
            return float(value)
        except ValueError:
            return None  # written by someone else, unparsable: as if unknown


class PlatformKey(TypeDecorator[str]):
    """A platform row's id as the jobs see it: text, whatever the column is (BIGINT, uuid, text),
    so the jobs' tables key on it alike; bound back as the column's own type."""

    impl = Text
    cache_ok = True

    def __init__(self, native: TypeEngine[Any]) -> None:
        super().__init__()
        self.native = native
        # The column's own type as the impl: SQLAlchemy then still sees an integer key as one
        # (the database assigns it on insert) and binds arrays of it as BIGINT[] or uuid[].
        self.impl = native  # type: ignore[assignment]  # TypeDecorator takes an instance too

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(self.native, Integer):
            return int(value)
        if isinstance(self.native, Uuid):
            return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        return str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value)


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
BigIntPK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")
JSONDocument: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")

__all__ = [
    "BigIntPK",
    "DurationText",
    "JSONDocument",
    "NaiveUTCDateTime",
    "PlatformKey",
    "UTCDateTime",
    "utcnow",
]
