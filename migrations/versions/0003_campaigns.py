"""campaigns: settings, paths, messages, conversion exits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 15:32:35.666901
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import models.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column(
            "tags",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("color", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cancel_reason", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True),
        sa.Column("timezone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("local_time", sa.Boolean(), nullable=False),
        sa.Column("past_time_policy", sa.String(length=16), nullable=False),
        sa.Column("exit_metric", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("started_at", models.types.UTCDateTime(), nullable=True),
        sa.Column("scheduled_at", models.types.UTCDateTime(), nullable=True),
        sa.Column("finished_at", models.types.UTCDateTime(), nullable=True),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_campaign_exit_metric"), ["exit_metric"], unique=False)
        batch_op.create_index(batch_op.f("ix_campaign_status"), ["status"], unique=False)

    op.create_table(
        "campaign_exit",
        sa.Column("campaign_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("converted_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("campaign_id", "profile_id"),
    )
    with op.batch_alter_table("campaign_exit", schema=None) as batch_op:
        batch_op.create_index("ix_campaign_exit_profile", ["profile_id"], unique=False)

    op.create_table(
        "campaign_path",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("campaign_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column(
            "include_lists",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "include_segments",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "exclude_lists",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "exclude_segments",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("campaign_path", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_campaign_path_campaign_id"), ["campaign_id"], unique=False
        )

    op.create_table(
        "campaign_message",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("campaign_id", sa.String(length=40), nullable=False),
        sa.Column("path_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column(
            "content",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("send_at_local", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("stagger_percent", sa.Integer(), nullable=True),
        sa.Column("smart_sending", sa.Boolean(), nullable=False),
        sa.Column("utm", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("audience_size", sa.Integer(), nullable=True),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["path_id"], ["campaign_path.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("campaign_message", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_campaign_message_campaign_id"), ["campaign_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("campaign_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_campaign_message_campaign_id"))

    op.drop_table("campaign_message")
    with op.batch_alter_table("campaign_path", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_campaign_path_campaign_id"))

    op.drop_table("campaign_path")
    with op.batch_alter_table("campaign_exit", schema=None) as batch_op:
        batch_op.drop_index("ix_campaign_exit_profile")

    op.drop_table("campaign_exit")
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_campaign_status"))
        batch_op.drop_index(batch_op.f("ix_campaign_exit_metric"))

    op.drop_table("campaign")
