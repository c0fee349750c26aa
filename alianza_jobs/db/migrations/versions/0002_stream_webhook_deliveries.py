"""Stream webhook deliveries: what the receiver stored (keyed by the body's SHA-256, so a delivery
Stream re-sends is stored once), and when and how ``apply_stream_webhooks`` applied each.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
PENDING = sa.text("applied_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "stream_webhook_deliveries",
        sa.Column("id", ID, nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stream_webhook_deliveries")),
        sa.UniqueConstraint("body_sha256", name=op.f("uq_stream_webhook_deliveries_body_sha256")),
    )
    with op.batch_alter_table("stream_webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_stream_webhook_deliveries_applied_at", ["applied_at"])
        batch_op.create_index(
            "ix_stream_webhook_deliveries_pending",
            ["id"],
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        )


def downgrade() -> None:
    with op.batch_alter_table("stream_webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_stream_webhook_deliveries_pending")
        batch_op.drop_index("ix_stream_webhook_deliveries_applied_at")
    op.drop_table("stream_webhook_deliveries")
