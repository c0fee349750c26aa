"""The jobs' own tables, as typed SQLAlchemy 2.x models: the only tables ``db upgrade`` creates.

The platform's tables (``streamings``, ``email_queue``, ``users``, ``user_sessions``) belong to the
platform's ORM; the jobs reach them through the schema map (``db.platform_tables``), and keep what
the platform's rows have no column for here, keyed by the platform row's id. BIGINT ids, aware
UTC timestamps, CHECK constraints on enumerated text; each index names its query. The conventions
in full: docs/platform.md, "alianza_jobs.db.models".
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from alianza_jobs.db.types import BigIntPK, JSONDocument, UTCDateTime, utcnow

# Deterministic constraint names: Alembic can only drop or alter what it can name, and SQLite's
# batch mode rebuilds tables by those names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

EMAIL_MAX = 320  # RFC 5321: 64 local part + @ + 255 domain
OWNER_MAX = 128  # a lease owner: a Dagster run id (36 chars) plus room for a suffix
STREAM_UID_MAX = 64  # Stream uids are 32 hex characters; hostile input may be longer
PLATFORM_KEY_MAX = 64  # a platform row's id as text: a bigint or a uuid, with room to spare


class StreamingStatus(StrEnum):
    QUEUED = "queued"
    READY = "ready"
    ERROR = "error"


class EmailStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"


class DeadLetterSource(StrEnum):
    EMAIL_QUEUE = "email_queue"
    STREAMINGS = "streamings"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class SoftDeletable:
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Leased:
    """A bookkeeping row: claimable when ``locked_until`` is null or past (see ``db.claims``)."""

    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    locked_by: Mapped[str | None] = mapped_column(String(OWNER_MAX))


class VideoCheck(Timestamped, Leased, Base):
    """The video queue's bookkeeping for one platform ``streamings`` row (by its id, as text: the
    platform's keys may be integers or uuids). Made when the queue first claims the row."""

    __tablename__ = "video_checks"

    streaming_id: Mapped[str] = mapped_column(String(PLATFORM_KEY_MAX), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_reason: Mapped[str | None] = mapped_column(Text)

    # Reading back a run's rows: WHERE locked_by = :owner.
    __table_args__ = (Index("ix_video_checks_locked_by", "locked_by"),)


class EmailDelivery(Timestamped, Leased, Base):
    """The email queue's bookkeeping for one platform ``email_queue`` row: our state (with
    ``sending`` and ``dead``, which the platform's status may lack), attempts, the Resend batch's
    Idempotency-Key and message id."""

    __tablename__ = "email_deliveries"

    email_id: Mapped[str] = mapped_column(String(PLATFORM_KEY_MAX), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=EmailStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=func.now()
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Stamped on every row of a batch before it is sent, so a batch cut short by a crash is re-sent
    # whole under the same key and Resend answers from its cache.
    idempotency_key: Mapped[str | None] = mapped_column(String(64), index=True)

    __table_args__ = (
        CheckConstraint(_in("status", EmailStatus), name="status"),
        Index("ix_email_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_email_deliveries_locked_by", "locked_by"),
    )


class DeadLetter(Timestamped, Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str] = mapped_column(String(PLATFORM_KEY_MAX))  # the platform row's id
    payload: Mapped[Any] = mapped_column(JSONDocument)
    error: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(_in("source", DeadLetterSource), name="source"),
        # replay_dead_letters: WHERE source = ? AND replayed_at IS NULL; and "is this item
        # already dead-lettered" look-ups by (source, source_id).
        Index("ix_dead_letters_source_source_id", "source", "source_id"),
        Index("ix_dead_letters_replayed_at", "replayed_at"),
    )


class SyncState(Timestamped, Base):
    __tablename__ = "sync_state"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StreamVideo(Timestamped, SoftDeletable, Base):
    """The mirrored Cloudflare Stream catalog, kept by ``sync_stream_catalog``."""

    __tablename__ = "stream_videos"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    uid: Mapped[str] = mapped_column(String(STREAM_UID_MAX), unique=True)
    state: Mapped[str] = mapped_column(String(32))
    # Stream sends pctComplete as a string ("75.5"); stored parsed, null when absent or unparsable.
    pct_complete: Mapped[float | None] = mapped_column(Float)
    duration: Mapped[float | None] = mapped_column(Float)  # seconds; null when Stream says -1
    ready_to_stream: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error_reason_code: Mapped[str | None] = mapped_column(String(64))
    error_reason_text: Mapped[str | None] = mapped_column(Text)
    stream_created: Mapped[datetime | None] = mapped_column(UTCDateTime())  # Stream's `created`
    # The sync pages by creation time (Stream's only cursor) and reports by modification.
    stream_modified: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    meta: Mapped[Any | None] = mapped_column(JSONDocument)


class DailyReport(Timestamped, Base):
    __tablename__ = "daily_reports"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    report_date: Mapped[date] = mapped_column(Date, unique=True)
    data: Mapped[Any] = mapped_column(JSONDocument)


class CircuitBreaker(Timestamped, Base):
    """Per external service: shared by every run, so a dead API is not hammered by each tick."""

    __tablename__ = "circuit_breakers"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    service: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=BreakerState.CLOSED.value)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    opened_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint(_in("state", BreakerState), name="state"),)


class WebhookDelivery(Timestamped, Base):
    """One Cloudflare Stream webhook delivery, stored by the receiver as it arrived (verified), and
    applied to the platform's ``streamings`` by ``apply_stream_webhooks``.

    Keyed by the SHA-256 of the raw body: Stream re-sends a delivery it got no answer to, with the
    same body, so a delivery stored before a crash and sent again is stored once."""

    __tablename__ = "stream_webhook_deliveries"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    uid: Mapped[str] = mapped_column(String(STREAM_UID_MAX))
    state: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[Any] = mapped_column(JSONDocument)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # settled, already_settled, unknown_uid, unreadable: what applying it did.
    outcome: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        # The sensor's question and the apply job's claim: WHERE applied_at IS NULL ORDER BY id.
        Index(
            "ix_stream_webhook_deliveries_pending",
            "id",
            postgresql_where=text("applied_at IS NULL"),
            sqlite_where=text("applied_at IS NULL"),
        ),
        # Pruning applied deliveries by age.
        Index("ix_stream_webhook_deliveries_applied_at", "applied_at"),
    )


metadata = Base.metadata

__all__ = [
    "Base",
    "BreakerState",
    "CircuitBreaker",
    "DailyReport",
    "DeadLetter",
    "DeadLetterSource",
    "EmailDelivery",
    "EmailStatus",
    "StreamVideo",
    "StreamingStatus",
    "SyncState",
    "VideoCheck",
    "WebhookDelivery",
    "metadata",
]
