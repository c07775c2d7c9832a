"""The routing outbox: written with what it announces, in one transaction; drained by the router."""

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, text
from sqlmodel import Column, Field, SQLModel

from models.enums import OutboxKind
from models.types import UTCDateTime, utcnow


class RoutingOutbox(SQLModel, table=True):
    __tablename__ = "routing_outbox"
    __table_args__ = (
        # Only pending rows are ever scanned; a partial index keeps that scan small forever.
        Index(
            "ix_routing_outbox_pending",
            "id",
            sqlite_where=text("routed_at IS NULL"),
            postgresql_where=text("routed_at IS NULL"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    kind: OutboxKind = Field(sa_type=String(20))
    profile_id: str = Field(
        sa_column=Column(String(40), ForeignKey("profile.id", ondelete="CASCADE"), nullable=False)
    )
    event_id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"),
            ForeignKey("event.id", ondelete="CASCADE"),
            nullable=True,
        ),
    )
    list_id: str | None = Field(
        default=None,
        sa_column=Column(
            String(40), ForeignKey("profile_list.id", ondelete="CASCADE"), nullable=True
        ),
    )
    segment_id: str | None = Field(
        default=None,
        sa_column=Column(String(40), ForeignKey("segment.id", ondelete="CASCADE"), nullable=True),
    )
    # Backfilled events update stats and segments but never fire triggers.
    backfill: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    routed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
