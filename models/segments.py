"""Segments and their materialized membership, journey engagement, and RFM scores and runs.

A segment's definition (herald/segments/definition.py) is JSON here; its members are
materialized in `segment_membership`, kept current by the router (incremental) and a schedule
(time-relative and journey conditions). `delivery_engagement` attributes opens, clicks and
bounces to the delivery they name, so journey results are indexed lookups rather than JSON scans
of the event table.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlmodel import Column, Field, SQLModel

from models.types import JSONType, UTCDateTime, utcnow


class Segment(SQLModel, table=True):
    __tablename__ = "segment"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=2000)
    # draft | live: only live segments may be audiences, flow triggers or split conditions.
    status: str = Field(default="draft", sa_type=String(16))
    # The SegmentDefinition as JSON; `version` counts definition changes.
    definition: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    version: int = Field(default=1)
    # Where a saved-as-segment journey result came from: {run_kind, run_id, step_id, result}.
    origin: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType, nullable=True))
    member_count: int = Field(default=0)
    computed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SegmentMembership(SQLModel, table=True):
    __tablename__ = "segment_membership"

    segment_id: str = Field(
        sa_column=Column(String(40), ForeignKey("segment.id", ondelete="CASCADE"), primary_key=True)
    )
    profile_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("profile.id", ondelete="CASCADE"), primary_key=True, index=True
        )
    )
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DeliveryEngagement(SQLModel, table=True):
    """The first open, click or bounce of one delivery (unique opens and clicks are rows)."""

    __tablename__ = "delivery_engagement"
    __table_args__ = (
        Index("ix_delivery_engagement_step", "run_kind", "run_id", "step_id", "kind"),
        Index("ix_delivery_engagement_profile", "profile_id", "kind"),
    )

    delivery_id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(primary_key=True, sa_type=String(16))  # opened | clicked | bounced
    run_kind: str = Field(sa_type=String(16))
    run_id: str = Field(max_length=255)
    step_id: str = Field(max_length=100)
    profile_id: str = Field(
        sa_column=Column(String(40), ForeignKey("profile.id", ondelete="CASCADE"), nullable=False)
    )
    event_id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), nullable=True),
    )
    at: datetime = Field(sa_type=UTCDateTime)


class RfmScore(SQLModel, table=True):
    """A customer's scores from the latest RFM run (mirrored into profile properties)."""

    __tablename__ = "rfm_score"

    profile_id: str = Field(
        sa_column=Column(String(40), ForeignKey("profile.id", ondelete="CASCADE"), primary_key=True)
    )
    recency: int = Field(sa_column=Column(Integer, nullable=False))
    frequency: int = Field(sa_column=Column(Integer, nullable=False))
    monetary: int = Field(sa_column=Column(Integer, nullable=False))
    group: str = Field(max_length=20, index=True)
    previous_group: str | None = Field(default=None, max_length=20)
    changed_at: datetime = Field(sa_type=UTCDateTime)
    run_id: str = Field(max_length=40)


class RfmRun(SQLModel, table=True):
    __tablename__ = "rfm_run"

    id: str = Field(primary_key=True, max_length=40)
    # completed | ineligible (the report names each unmet requirement; nothing changed)
    status: str = Field(sa_type=String(16))
    as_of: datetime = Field(sa_type=UTCDateTime, index=True)
    report: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
