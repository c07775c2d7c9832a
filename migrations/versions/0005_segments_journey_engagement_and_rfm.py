"""segments, their membership, journey engagement, RFM scores and runs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:34:39.793560
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import models.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rfm_run",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("as_of", models.types.UTCDateTime(), nullable=False),
        sa.Column(
            "report",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rfm_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rfm_run_as_of"), ["as_of"], unique=False)

    op.create_table(
        "segment",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "definition",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "origin",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("member_count", sa.Integer(), nullable=False),
        sa.Column("computed_at", models.types.UTCDateTime(), nullable=True),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "delivery_engagement",
        sa.Column("delivery_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("run_kind", sa.String(length=16), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("step_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("delivery_id", "kind"),
    )
    with op.batch_alter_table("delivery_engagement", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_engagement_profile", ["profile_id", "kind"], unique=False
        )
        batch_op.create_index(
            "ix_delivery_engagement_step", ["run_kind", "run_id", "step_id", "kind"], unique=False
        )

    op.create_table(
        "rfm_score",
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("recency", sa.Integer(), nullable=False),
        sa.Column("frequency", sa.Integer(), nullable=False),
        sa.Column("monetary", sa.Integer(), nullable=False),
        sa.Column("group", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("previous_group", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("changed_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("profile_id"),
    )
    with op.batch_alter_table("rfm_score", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rfm_score_group"), ["group"], unique=False)

    op.create_table(
        "segment_membership",
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("added_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["segment_id"], ["segment.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("segment_id", "profile_id"),
    )
    with op.batch_alter_table("segment_membership", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_segment_membership_profile_id"), ["profile_id"], unique=False
        )

    with op.batch_alter_table("routing_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("segment_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(
            "fk_routing_outbox_segment_id", "segment", ["segment_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("routing_outbox", schema=None) as batch_op:
        batch_op.drop_constraint("fk_routing_outbox_segment_id", type_="foreignkey")
        batch_op.drop_column("segment_id")

    with op.batch_alter_table("segment_membership", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_membership_profile_id"))

    op.drop_table("segment_membership")
    with op.batch_alter_table("rfm_score", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rfm_score_group"))

    op.drop_table("rfm_score")
    with op.batch_alter_table("delivery_engagement", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_engagement_step")
        batch_op.drop_index("ix_delivery_engagement_profile")

    op.drop_table("delivery_engagement")
    op.drop_table("segment")
    with op.batch_alter_table("rfm_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rfm_run_as_of"))

    op.drop_table("rfm_run")
