"""an enrollment outlives its profile: no foreign key from flow_enrollment to profile

Deleting a profile keeps its enrollments (cancelled, without personal data) so that flow
reports keep their counts; see herald/profiles/resolution.py delete_profile.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 13:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's foreign key has no name: batch mode names it by this convention when it reflects it.
_CONVENTION = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _fk_name() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "flow_enrollment_profile_id_fkey"
    return "fk_flow_enrollment_profile_id_profile"


def upgrade() -> None:
    with op.batch_alter_table("flow_enrollment", naming_convention=_CONVENTION) as batch_op:
        batch_op.drop_constraint(_fk_name(), type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("flow_enrollment", naming_convention=_CONVENTION) as batch_op:
        batch_op.create_foreign_key(_fk_name(), "profile", ["profile_id"], ["id"])
