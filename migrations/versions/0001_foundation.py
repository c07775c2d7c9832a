"""foundation: account, keys, profiles, consent, lists, metrics, events, routing outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-22 14:56:19.882284
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import models.types
from herald.ingest.catalogue import BUILTIN_METRICS

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("timezone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column(
            "enabled_channels",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "smart_sending_hours",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("quiet_hours_start", sqlmodel.sql.sqltypes.AutoString(length=5), nullable=False),
        sa.Column("quiet_hours_end", sqlmodel.sql.sqltypes.AutoString(length=5), nullable=False),
        sa.Column(
            "frequency_caps",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "api_key",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("lookup", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", models.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("lookup"),
    )
    op.create_table(
        "metric",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "profile",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("external_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("phone", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("anonymous_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("first_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("last_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("timezone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column(
            "push_tokens",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "properties",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("anonymous_id"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("external_id"),
        sa.UniqueConstraint("phone"),
    )
    with op.batch_alter_table("profile", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profile_created_at"), ["created_at"], unique=False)

    op.create_table(
        "profile_list",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", models.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "consent",
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("updated_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("profile_id", "channel"),
    )
    op.create_table(
        "consent_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("consent_change", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_consent_change_profile_id"), ["profile_id"], unique=False
        )

    op.create_table(
        "event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("metric_id", sa.Integer(), nullable=False),
        sa.Column("time", models.types.UTCDateTime(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column(
            "properties",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("unique_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
        sa.Column("received_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["metric_id"],
            ["metric.id"],
        ),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("profile_id", "metric_id", "unique_id", name="uq_event_dedup"),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_metric_time", ["metric_id", "time"], unique=False)
        batch_op.create_index(
            "ix_event_profile_metric_time", ["profile_id", "metric_id", "time"], unique=False
        )

    op.create_table(
        "list_membership",
        sa.Column("list_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("added_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["profile_list.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("list_id", "profile_id"),
    )
    with op.batch_alter_table("list_membership", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_list_membership_profile_id"), ["profile_id"], unique=False
        )

    op.create_table(
        "profile_metric_stat",
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("metric_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("total_value", sa.Float(), nullable=False),
        sa.Column("first_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("last_at", models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["metric_id"],
            ["metric.id"],
        ),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("profile_id", "metric_id"),
    )
    op.create_table(
        "routing_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("list_id", sa.String(length=40), nullable=True),
        sa.Column("backfill", sa.Boolean(), nullable=False),
        sa.Column("created_at", models.types.UTCDateTime(), nullable=False),
        sa.Column("routed_at", models.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["event.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["list_id"], ["profile_list.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("routing_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_routing_outbox_pending",
            ["id"],
            unique=False,
            sqlite_where=sa.text("routed_at IS NULL"),
            postgresql_where=sa.text("routed_at IS NULL"),
        )

    _seed()


def _seed() -> None:
    """The single account row and the built-in metric catalogue."""
    now = datetime.now(UTC).replace(tzinfo=None)
    account = sa.table(
        "account",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("timezone", sa.String),
        sa.column("enabled_channels", sa.JSON),
        sa.column("smart_sending_hours", sa.JSON),
        sa.column("quiet_hours_start", sa.String),
        sa.column("quiet_hours_end", sa.String),
        sa.column("frequency_caps", sa.JSON),
        sa.column("updated_at", sa.DateTime),
    )
    op.bulk_insert(
        account,
        [
            {
                "id": 1,
                "name": "Herald",
                "timezone": "UTC",
                "enabled_channels": ["email", "sms", "whatsapp", "push"],
                "smart_sending_hours": {"email": 16, "sms": 24, "whatsapp": 24, "push": 24},
                "quiet_hours_start": "21:00",
                "quiet_hours_end": "08:00",
                "frequency_caps": {},
                "updated_at": now,
            }
        ],
    )
    metric = sa.table(
        "metric",
        sa.column("name", sa.String),
        sa.column("builtin", sa.Boolean),
        sa.column("created_at", sa.DateTime),
    )
    op.bulk_insert(
        metric, [{"name": n, "builtin": True, "created_at": now} for n in BUILTIN_METRICS]
    )


def downgrade() -> None:

    with op.batch_alter_table("routing_outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_routing_outbox_pending",
            sqlite_where=sa.text("routed_at IS NULL"),
            postgresql_where=sa.text("routed_at IS NULL"),
        )

    op.drop_table("routing_outbox")
    op.drop_table("profile_metric_stat")
    with op.batch_alter_table("list_membership", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_list_membership_profile_id"))

    op.drop_table("list_membership")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_profile_metric_time")
        batch_op.drop_index("ix_event_metric_time")

    op.drop_table("event")
    with op.batch_alter_table("consent_change", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_change_profile_id"))

    op.drop_table("consent_change")
    op.drop_table("consent")
    op.drop_table("profile_list")
    with op.batch_alter_table("profile", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profile_created_at"))

    op.drop_table("profile")
    op.drop_table("metric")
    op.drop_table("api_key")
    op.drop_table("account")
