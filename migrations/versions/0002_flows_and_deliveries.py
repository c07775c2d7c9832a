"""flows: definitions, versions, enrollments, timelines, review queue; deliveries and outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:58:42.363624
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import models.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column("run_kind", sa.String(length=16), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("step_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("workflow_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("profile_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True),
        sa.Column("transactional", sa.Boolean(), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column(
            "provider_message_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
        ),
        sa.Column("to_address", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=True),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=998), nullable=True),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("sent_at", models.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_profile_channel_sent", ["profile_id", "channel", "sent_at"], unique=False
        )
        batch_op.create_index(
            "ix_delivery_run_step", ["run_kind", "run_id", "step_id", "status"], unique=False
        )

    op.create_table(
        "enrollment_step",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("flow_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("profile_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("step_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("step_type", sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workflow_id", "step_id", "outcome", name="uq_enrollment_step"),
    )
    with op.batch_alter_table("enrollment_step", schema=None) as batch_op:
        batch_op.create_index(
            "ix_enrollment_step_flow_step", ["flow_id", "step_id", "outcome"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_enrollment_step_workflow_id"), ["workflow_id"], unique=False
        )

    op.create_table(
        "flow",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger_type", sa.String(length=20), nullable=False),
        sa.Column("trigger_key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("exit_metric", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("deleted_at", models.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flow", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_flow_exit_metric"), ["exit_metric"], unique=False)
        batch_op.create_index(batch_op.f("ix_flow_trigger_key"), ["trigger_key"], unique=False)

    op.create_table(
        "message_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("delivery_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("profile_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("to_address", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=998), nullable=True),
        sa.Column("body", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column(
            "tracking",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("delivery_id"),
    )
    with op.batch_alter_table("message_outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_message_outbox_profile_id"), ["profile_id"], unique=False
        )

    op.create_table(
        "review_item",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("workflow_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("flow_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("step_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("profile_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("decided_at", models.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workflow_id", "step_id", name="uq_review_item"),
    )
    with op.batch_alter_table("review_item", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_item_flow_id"), ["flow_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_review_item_status"), ["status"], unique=False)

    op.create_table(
        "flow_enrollment",
        sa.Column("workflow_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("flow_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("entry_key", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_step", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("exit_reason", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column(
            "trigger",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("started_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("ended_at", models.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["flow_id"],
            ["flow.id"],
        ),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["profile.id"],
        ),
        sa.PrimaryKeyConstraint("workflow_id"),
    )
    with op.batch_alter_table("flow_enrollment", schema=None) as batch_op:
        batch_op.create_index(
            "ix_flow_enrollment_flow_profile", ["flow_id", "profile_id", "started_at"], unique=False
        )
        batch_op.create_index("ix_flow_enrollment_flow_status", ["flow_id", "status"], unique=False)
        batch_op.create_index(
            "ix_flow_enrollment_profile_status", ["profile_id", "status"], unique=False
        )

    op.create_table(
        "flow_version",
        sa.Column("flow_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column(
            "definition",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["flow_id"], ["flow.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("flow_id", "version"),
    )


def downgrade() -> None:
    op.drop_table("flow_version")
    with op.batch_alter_table("flow_enrollment", schema=None) as batch_op:
        batch_op.drop_index("ix_flow_enrollment_profile_status")
        batch_op.drop_index("ix_flow_enrollment_flow_status")
        batch_op.drop_index("ix_flow_enrollment_flow_profile")

    op.drop_table("flow_enrollment")
    with op.batch_alter_table("review_item", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_item_status"))
        batch_op.drop_index(batch_op.f("ix_review_item_flow_id"))

    op.drop_table("review_item")
    with op.batch_alter_table("message_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_outbox_profile_id"))

    op.drop_table("message_outbox")
    with op.batch_alter_table("flow", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_flow_trigger_key"))
        batch_op.drop_index(batch_op.f("ix_flow_exit_metric"))

    op.drop_table("flow")
    with op.batch_alter_table("enrollment_step", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrollment_step_workflow_id"))
        batch_op.drop_index("ix_enrollment_step_flow_step")

    op.drop_table("enrollment_step")
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_run_step")
        batch_op.drop_index("ix_delivery_profile_channel_sent")

    op.drop_table("delivery")
