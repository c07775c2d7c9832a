"""Metrics (what happened), events (one occurrence for one profile) and per-profile stats."""

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import field_validator, model_validator
from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from models.profile import ProfileAttributes, ProfileIdentity
from models.types import JSONType, UTCDateTime, reject_unstorable, utcnow


class Metric(SQLModel, table=True):
    __tablename__ = "metric"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    builtin: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Event(SQLModel, table=True):
    __tablename__ = "event"
    # Dedup key from SPEC: (profile, metric, unique_id); without a unique_id the ingest layer
    # uses the event time truncated to the second.
    __table_args__ = (
        UniqueConstraint("profile_id", "metric_id", "unique_id", name="uq_event_dedup"),
        Index("ix_event_profile_metric_time", "profile_id", "metric_id", "time"),
        Index("ix_event_metric_time", "metric_id", "time"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    profile_id: str = Field(
        sa_column=Column(String(40), ForeignKey("profile.id", ondelete="CASCADE"), nullable=False)
    )
    metric_id: int = Field(foreign_key="metric.id")
    time: datetime = Field(sa_type=UTCDateTime)
    value: float | None = None
    properties: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )
    unique_id: str = Field(max_length=255)
    source: str = Field(default="api", max_length=50)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ProfileMetricStat(SQLModel, table=True):
    """Running totals per profile and metric, maintained by the router (exactly once per event)."""

    __tablename__ = "profile_metric_stat"

    profile_id: str = Field(
        sa_column=Column(String(40), ForeignKey("profile.id", ondelete="CASCADE"), primary_key=True)
    )
    metric_id: int = Field(foreign_key="metric.id", primary_key=True)
    count: int = 0
    total_value: float = 0.0
    first_at: datetime = Field(sa_type=UTCDateTime)
    last_at: datetime = Field(sa_type=UTCDateTime)


# ---- DTOs -------------------------------------------------------------------------------------

EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_AHEAD = timedelta(days=365)
MAX_BATCH_EVENTS = 1000


class EventProfile(ProfileIdentity, ProfileAttributes):
    """Who did it: identifiers (at least one) plus optional attributes to store on the profile."""

    @model_validator(mode="after")
    def _needs_identifier(self):
        if not self.has_identifier():
            raise ValueError("at least one of external_id, email, phone, anonymous_id is required")
        return self


class EventIn(SQLModel):
    metric: str = Field(min_length=1, max_length=200)
    profile: EventProfile
    properties: dict[str, Any] = Field(default_factory=dict)
    value: float | None = None
    time: datetime | None = None
    unique_id: str | None = Field(default=None, min_length=1, max_length=255)
    # Backfill: store (stats and segments still see it) but fire no trigger.
    backfill: bool = False

    _storable = model_validator(mode="before")(classmethod(reject_unstorable))

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("metric name must not be blank")
        return v

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("value must be a finite number")
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)  # ISO times without an offset are read as UTC
        if v < EARLIEST_EVENT_TIME:
            raise ValueError("event time must not be before 2000-01-01")
        if v > datetime.now(UTC) + LATEST_EVENT_AHEAD:
            raise ValueError("event time must not be more than 1 year in the future")
        return v

    @model_validator(mode="after")
    def _value_and_dollar_value(self):
        # `value` and the `$value` property are the same fact; keep both in step so trigger
        # splits on `$value` and revenue sums on `value` agree.
        dollar = self.properties.get("$value")
        if self.value is None and isinstance(dollar, int | float) and not isinstance(dollar, bool):
            self.value = float(dollar)
        elif self.value is not None and "$value" not in self.properties:
            self.properties["$value"] = self.value
        return self


class EventAccepted(SQLModel):
    status: str  # "accepted" (stored now) or "duplicate" (stored before; not stored again)
    event_id: int
    profile_id: str


class FieldError(SQLModel):
    field: str
    reason: str


class BatchItemResult(SQLModel):
    index: int
    status: str  # accepted | duplicate | rejected
    event_id: int | None = None
    profile_id: str | None = None
    errors: list[FieldError] | None = None


class BatchResult(SQLModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[BatchItemResult]


class EventPublic(SQLModel):
    id: int
    profile_id: str
    metric: str
    time: datetime
    value: float | None
    properties: dict[str, Any]
    unique_id: str
    source: str
    received_at: datetime


class MetricPublic(SQLModel):
    id: int
    name: str
    builtin: bool
