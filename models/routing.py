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
    # Routing attempts of this row alone that started and never finished (the worker died or the
    # activity timed out): counted only after a failed activity attempt, see activities/routing.py.
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})


class RoutingDeadLetter(SQLModel, table=True):
    """An outbox row that failed on its own, parked so that later rows route past it.

    The outbox row is marked routed when it is parked; a retry deletes this row and clears that
    mark, so the router claims the item again (first, as the oldest pending row).
    """

    __tablename__ = "routing_dead_letter"
    # Ids never reused (SQLite would reuse a deleted row's): a stale retry of a row parked
    # again must be a 404, not a retry of the new dead letter.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    outbox_id: int = Field(
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"),
            ForeignKey("routing_outbox.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        )
    )
    handler: str = Field(max_length=100)  # the handler that raised
    error: str = Field(max_length=2000)
    parked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SegmentRoutingHealth(SQLModel, table=True):
    """How a live segment's incremental re-checks fare: failures, and when to try again."""

    __tablename__ = "segment_routing_health"

    segment_id: str = Field(
        sa_column=Column(String(40), ForeignKey("segment.id", ondelete="CASCADE"), primary_key=True)
    )
    failures: int = 0  # in a row: drives the back-off; 0 once a re-check succeeds again
    total_failures: int = 0
    last_error: str = Field(default="", max_length=2000)
    last_failed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    retry_after: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SegmentRecheck(SQLModel, table=True):
    """A profile whose re-check of a failing segment was deferred; retried after the back-off.

    `organic` is false only when every deferral came from backfilled history, which moves
    members without announcing them.
    """

    __tablename__ = "segment_recheck"

    segment_id: str = Field(
        sa_column=Column(String(40), ForeignKey("segment.id", ondelete="CASCADE"), primary_key=True)
    )
    profile_id: str = Field(
        sa_column=Column(String(40), ForeignKey("profile.id", ondelete="CASCADE"), primary_key=True)
    )
    organic: bool = True
    deferred_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
