"""channel providers and the send path: provider settings per channel, delivery segments and
test marks, account delivery guarantees

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

import models.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "channel_provider",
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("provider", sa.String(40), nullable=False),
        sa.Column("config", _JSON, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_detail", sa.String(1000), nullable=True),
        sa.Column("state_at", models.types.UTCDateTime(), nullable=True),
        sa.Column("updated_at", models.types.UTCDateTime(), nullable=False),
    )
    op.create_table(
        "provider_pace",
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("next_at", models.types.UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.add_column(sa.Column("segments", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("test", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("claimed_at", models.types.UTCDateTime(), nullable=True))
    with op.batch_alter_table("account") as batch_op:
        batch_op.add_column(
            sa.Column("delivery_guarantees", _JSON, nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("account") as batch_op:
        batch_op.drop_column("delivery_guarantees")
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("test")
        batch_op.drop_column("segments")
    op.drop_table("provider_pace")
    op.drop_table("channel_provider")
