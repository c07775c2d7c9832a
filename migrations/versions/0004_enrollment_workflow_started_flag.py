"""flow_enrollment.workflow_started: enrollment workflows start after the routing commit

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 16:22:24.275399
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("flow_enrollment", schema=None) as batch_op:
        # Existing enrollments were started inside their routing transaction.
        batch_op.add_column(
            sa.Column("workflow_started", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("flow_enrollment", schema=None) as batch_op:
        batch_op.drop_column("workflow_started")
