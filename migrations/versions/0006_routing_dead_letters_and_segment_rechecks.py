"""routing dead letters and unfinished attempts, deferred re-checks and health of segments

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:51:46.597435
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import models.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("routing_outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.create_table(
        "segment_recheck",
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("organic", sa.Boolean(), nullable=False),
        sa.Column("deferred_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["segment_id"], ["segment.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("segment_id", "profile_id"),
    )
    op.create_table(
        "segment_routing_health",
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("total_failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("last_failed_at", models.types.UTCDateTime(), nullable=True),
        sa.Column("retry_after", models.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["segment_id"], ["segment.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("segment_id"),
    )
    op.create_table(
        "routing_dead_letter",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "outbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("handler", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("parked_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["outbox_id"], ["routing_outbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("outbox_id"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("routing_dead_letter")
    op.drop_table("segment_routing_health")
    op.drop_table("segment_recheck")
    with op.batch_alter_table("routing_outbox", schema=None) as batch_op:
        batch_op.drop_column("attempts")
