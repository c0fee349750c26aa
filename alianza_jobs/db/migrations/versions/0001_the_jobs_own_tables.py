"""The jobs' own tables: dead letters, sync state, the mirrored Stream catalog, daily reports,
circuit breakers, and the bookkeeping of the two queues (video_checks, email_deliveries), keyed by
the platform row's id. The platform's tables are not created here (``db platform-stand-in`` makes a
local stand-in).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT keys, except on SQLite where only INTEGER PRIMARY KEY auto-increments.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "circuit_breakers",
        sa.Column("id", ID, nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("opened_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "state IN ('closed', 'open', 'half_open')", name=op.f("ck_circuit_breakers_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_circuit_breakers")),
        sa.UniqueConstraint("service", name=op.f("uq_circuit_breakers_service")),
    )
    op.create_table(
        "daily_reports",
        sa.Column("id", ID, nullable=False),
        sa.Column("report_date", sa.Date(), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daily_reports")),
        sa.UniqueConstraint("report_date", name=op.f("uq_daily_reports_report_date")),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", ID, nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "source IN ('email_queue', 'streamings')", name=op.f("ck_dead_letters_source")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index("ix_dead_letters_replayed_at", "dead_letters", ["replayed_at"])
    op.create_index("ix_dead_letters_source_source_id", "dead_letters", ["source", "source_id"])
    op.create_table(
        "email_deliveries",
        sa.Column("email_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("provider_message_id", sa.String(length=128), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.String(length=64), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_by", sa.String(length=128), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed', 'dead')",
            name=op.f("ck_email_deliveries_status"),
        ),
        sa.PrimaryKeyConstraint("email_id", name=op.f("pk_email_deliveries")),
    )
    op.create_index("ix_email_deliveries_idempotency_key", "email_deliveries", ["idempotency_key"])
    op.create_index("ix_email_deliveries_locked_by", "email_deliveries", ["locked_by"])
    op.create_index(
        "ix_email_deliveries_status_next_attempt_at",
        "email_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_table(
        "stream_videos",
        sa.Column("id", ID, nullable=False),
        sa.Column("uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("pct_complete", sa.Float(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("ready_to_stream", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error_reason_code", sa.String(length=64), nullable=True),
        sa.Column("error_reason_text", sa.Text(), nullable=True),
        sa.Column("stream_created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stream_modified", sa.DateTime(timezone=True), nullable=True),
        sa.Column("meta", JSON, nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stream_videos")),
        sa.UniqueConstraint("uid", name=op.f("uq_stream_videos_uid")),
    )
    op.create_index("ix_stream_videos_stream_modified", "stream_videos", ["stream_modified"])
    op.create_table(
        "sync_state",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_state")),
        sa.UniqueConstraint("name", name=op.f("uq_sync_state_name")),
    )
    op.create_table(
        "video_checks",
        sa.Column("streaming_id", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("streaming_id", name=op.f("pk_video_checks")),
    )
    op.create_index("ix_video_checks_locked_by", "video_checks", ["locked_by"])


def downgrade() -> None:
    op.drop_index("ix_video_checks_locked_by", table_name="video_checks")
    op.drop_table("video_checks")
    op.drop_table("sync_state")
    op.drop_index("ix_stream_videos_stream_modified", table_name="stream_videos")
    op.drop_table("stream_videos")
    op.drop_index("ix_email_deliveries_status_next_attempt_at", table_name="email_deliveries")
    op.drop_index("ix_email_deliveries_locked_by", table_name="email_deliveries")
    op.drop_index("ix_email_deliveries_idempotency_key", table_name="email_deliveries")
    op.drop_table("email_deliveries")
    op.drop_index("ix_dead_letters_source_source_id", table_name="dead_letters")
    op.drop_index("ix_dead_letters_replayed_at", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_table("daily_reports")
    op.drop_table("circuit_breakers")
