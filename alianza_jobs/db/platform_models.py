"""A stand-in for the platform's tables, for local use: ``alianza-jobs db platform-stand-in``.

In production these tables belong to the platform's own ORM and already exist; the jobs' migrations
never create, alter or drop them. Locally (``make dev``, the tests, the benchmarks) nothing else
makes them, so this module does, with the names and types of the default schema map: BIGINT ids,
aware UTC timestamps, statuses as CHECK-constrained text. The jobs reach them only through
``db.platform_tables``, which reflects whatever the database holds, so nothing in the jobs depends
on these classes; tests use them to insert and read platform rows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from alianza_jobs.db.models import (
    EMAIL_MAX,
    NAMING_CONVENTION,
    STREAM_UID_MAX,
    EmailStatus,
    SoftDeletable,
    StreamingStatus,
    Timestamped,
    _in,
)
from alianza_jobs.db.types import BigIntPK, UTCDateTime


class PlatformBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Timestamped, SoftDeletable, PlatformBase):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), unique=True)
    name: Mapped[str] = mapped_column(String(200))


class UserSession(Timestamped, PlatformBase):
    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # cleanup_expired_sessions: DELETE ... WHERE id IN (SELECT id ... WHERE expires_at <= now LIMIT n)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Streaming(Timestamped, SoftDeletable, PlatformBase):
    __tablename__ = "streamings"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # Neither required nor unique: rows arrive from elsewhere with missing and repeated uids, and
    # the queue task must cope with both (see the Stream task) rather than the insert failing.
    external_id: Mapped[str | None] = mapped_column(String(STREAM_UID_MAX), index=True)
    provider: Mapped[str] = mapped_column(String(32), default="cloudflare")
    status: Mapped[str] = mapped_column(String(16), default=StreamingStatus.QUEUED.value)
    duration: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        CheckConstraint(_in("status", StreamingStatus), name="status"),
        # process_streaming_video_queue: WHERE status = 'queued' AND provider = 'cloudflare'
        # ORDER BY created_at.
        Index("ix_streamings_status_provider_created_at", "status", "provider", "created_at"),
    )


class EmailQueue(Timestamped, PlatformBase):
    __tablename__ = "email_queue"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    to_address: Mapped[str] = mapped_column(String(EMAIL_MAX))
    from_address: Mapped[str | None] = mapped_column(String(EMAIL_MAX))  # null: EMAIL_FROM
    subject: Mapped[str] = mapped_column(String(998))  # RFC 5322 line length limit
    html: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=EmailStatus.PENDING.value)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("status", EmailStatus), name="status"),
        # process_email_queue: WHERE status IN ('pending', 'sending', 'failed').
        Index("ix_email_queue_status_created_at", "status", "created_at"),
    )


platform_metadata = PlatformBase.metadata


async def create_stand_in(engine: AsyncEngine) -> list[str]:
    """Create whichever stand-in tables do not exist yet; returns their names. Existing tables
    (the platform's own, or an earlier stand-in) are left exactly as they are."""

    def create(connection: object) -> list[str]:
        from sqlalchemy import inspect

        present = set(inspect(connection).get_table_names())
        missing = [t for t in platform_metadata.sorted_tables if t.name not in present]
        platform_metadata.create_all(connection, tables=missing)  # type: ignore[arg-type]
        return [t.name for t in missing]

    async with engine.begin() as conn:
        return await conn.run_sync(create)


__all__ = [
    "EmailQueue",
    "PlatformBase",
    "Streaming",
    "User",
    "UserSession",
    "create_stand_in",
    "platform_metadata",
]
