"""Timestamps as Cloudflare writes and reads them: RFC 3339, UTC, microseconds.

Times are kept as integer microseconds since the epoch, so a ``created`` a client echoes back as
``after`` compares exactly equal (floats would not), which is what makes exclusive paging work.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(value: datetime | float | int) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return round(float(value) * 1_000_000)


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def format_us(us: int) -> str:
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(text: str) -> int:
    """Parse an RFC 3339 timestamp to microseconds; raises ValueError when it is not one.

    A ``+`` in an offset that reached us unencoded in a query string arrives as a space.
    """
    raw = text.strip()
    if " " in raw and "T" in raw:
        raw = raw.replace(" ", "+")
    parsed = datetime.fromisoformat(raw)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return to_us(parsed)
