"""Omnichannel campaigns: settings, paths (audiences), messages, and conversion exits.

A campaign is edited in draft; scheduling snapshots it into its CampaignWorkflow's input, so a
running campaign never sees edits (and the API locks what must not change: send settings and
exit criteria while anything is scheduled, for good once anything was sent). Deliveries use the
shared `delivery` table (run_kind "campaign", run_id = campaign id, step_id = message id).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlmodel import Column, Field, SQLModel

from models.types import JSONType, UTCDateTime, utcnow


class Campaign(SQLModel, table=True):
    __tablename__ = "campaign"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=2000)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    color: str | None = Field(default=None, max_length=20)
    # draft | scheduled | sending | sent | cancelled (CampaignStatus)
    status: str = Field(default="draft", sa_type=String(16), index=True)
    cancel_reason: str | None = Field(default=None, max_length=60)
    # Send settings: message times are wall-clock times in `timezone`, or in each recipient's
    # own timezone when `local_time` (then `past_time_policy` says what to do with recipients
    # whose local time has already passed: send "immediately" or at the time on the "next_day").
    timezone: str = Field(default="UTC", max_length=64)
    local_time: bool = Field(default=False)
    past_time_policy: str = Field(default="immediately", sa_type=String(16))
    # Exit criteria: a built-in conversion metric; None = off.
    exit_metric: str | None = Field(default=None, max_length=200, index=True)
    # When the earliest message was actually sent (any path): conversions after it exclude.
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    scheduled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CampaignPath(SQLModel, table=True):
    __tablename__ = "campaign_path"

    id: str = Field(primary_key=True, max_length=40)
    campaign_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("campaign.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    position: int
    name: str = Field(max_length=200)
    # Audience: members of any included list/segment, minus members of any excluded one.
    include_lists: list[str] = Field(
        default_factory=list, sa_column=Column(JSONType, nullable=False)
    )
    include_segments: list[str] = Field(
        default_factory=list, sa_column=Column(JSONType, nullable=False)
    )
    exclude_lists: list[str] = Field(
        default_factory=list, sa_column=Column(JSONType, nullable=False)
    )
    exclude_segments: list[str] = Field(
        default_factory=list, sa_column=Column(JSONType, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CampaignMessage(SQLModel, table=True):
    __tablename__ = "campaign_message"

    id: str = Field(primary_key=True, max_length=40)
    campaign_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("campaign.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    path_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("campaign_path.id", ondelete="CASCADE"), nullable=False
        )
    )
    position: int
    channel: str = Field(sa_type=String(16))
    # MessageContent (herald/flows/graph.py): subject, body (Liquid), sender.
    content: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType))
    # Wall-clock send time, "YYYY-MM-DDTHH:MM", in the campaign's (or recipient's) timezone.
    send_at_local: str = Field(max_length=16)
    # None: all at once; 10..50: that percent of the path's recipients per hour.
    stagger_percent: int | None = Field(default=None)
    smart_sending: bool = Field(default=True)
    utm: bool = Field(default=True)
    # draft | scheduled | sending | sent | cancelled
    status: str = Field(default="draft", sa_type=String(16))
    audience_size: int | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CampaignExit(SQLModel, table=True):
    """A profile excluded from the rest of a campaign because it converted after the start."""

    __tablename__ = "campaign_exit"
    __table_args__ = (Index("ix_campaign_exit_profile", "profile_id"),)

    campaign_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("campaign.id", ondelete="CASCADE"), primary_key=True
        )
    )
    profile_id: str = Field(sa_column=Column(String(40), primary_key=True))
    event_id: int | None = None
    converted_at: datetime = Field(sa_type=UTCDateTime)
