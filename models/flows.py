"""Flows: definitions and their versions, enrollments, their timelines and the review queue.

A flow's definition (trigger, filters, steps, ...) lives in FlowVersion rows; editing creates a
new version, and an enrollment records the version it started on, so running enrollments never
see edits. The enrollment row mirrors the workflow for listing and reporting; the workflow is the
source of truth for where a running enrollment is, the row for whether it may still be messaged
(the router marks exits here in the same transaction that routes the conversion).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from models.types import JSONType, UTCDateTime, utcnow


class Flow(SQLModel, table=True):
    __tablename__ = "flow"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    # draft | manual | live (FlowStatus); not versioned: it applies to running enrollments too.
    status: str = Field(default="draft", sa_type=String(16))
    # What routing matches on, copied from the newest version so triggers are one indexed query.
    trigger_type: str = Field(sa_type=String(20))
    trigger_key: str | None = Field(default=None, max_length=255, index=True)
    exit_metric: str | None = Field(default=None, max_length=200, index=True)
    latest_version: int = Field(default=1)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class FlowVersion(SQLModel, table=True):
    __tablename__ = "flow_version"

    flow_id: str = Field(
        sa_column=Column(String(40), ForeignKey("flow.id", ondelete="CASCADE"), primary_key=True)
    )
    version: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    # The FlowDefinition (herald.flow_graph) as JSON.
    definition: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class FlowEnrollment(SQLModel, table=True):
    __tablename__ = "flow_enrollment"
    __table_args__ = (
        Index("ix_flow_enrollment_flow_status", "flow_id", "status"),
        Index("ix_flow_enrollment_profile_status", "profile_id", "status"),
        Index("ix_flow_enrollment_flow_profile", "flow_id", "profile_id", "started_at"),
    )

    # flow/<flow_id>/<profile_id>/<entry_key>: the Temporal workflow ID.
    workflow_id: str = Field(primary_key=True, max_length=255)
    flow_id: str = Field(sa_column=Column(String(40), ForeignKey("flow.id"), nullable=False))
    version: int
    # Not a foreign key: the enrollment outlives a deleted profile (herald/profiles/resolution.py).
    profile_id: str = Field(sa_column=Column(String(40), nullable=False))
    entry_key: str = Field(max_length=200)
    # running | completed | exited | cancelled | failed (EnrollmentStatus)
    status: str = Field(default="running", sa_type=String(16))
    current_step: str | None = Field(default=None, max_length=100)
    # Set by the router (conversion), an operator (cancel) or the workflow (filter, exit step).
    exit_reason: str | None = Field(default=None, max_length=40)
    # The trigger event, for templates and trigger splits: {metric, event_id, value, properties}.
    trigger: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType))
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # False from the routing transaction until Temporal accepted the start (done after commit,
    # so the router never holds the database while it talks to Temporal); the router retries
    # rows left False by a crash in between.
    workflow_started: bool = Field(default=True)


class EnrollmentStep(SQLModel, table=True):
    """One line of an enrollment's timeline: a step processed, skipped, held or exited at."""

    __tablename__ = "enrollment_step"
    __table_args__ = (
        # Activities may retry: recording the same outcome of a step twice must be a no-op.
        UniqueConstraint("workflow_id", "step_id", "outcome", name="uq_enrollment_step"),
        Index("ix_enrollment_step_flow_step", "flow_id", "step_id", "outcome"),
    )

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(max_length=255, index=True)
    flow_id: str = Field(max_length=40)
    profile_id: str = Field(max_length=40)
    step_id: str = Field(max_length=100)
    step_type: str = Field(max_length=30)
    # entered | processed | skipped | held | queued | exited (StepOutcome)
    outcome: str = Field(sa_type=String(16))
    reason: str | None = Field(default=None, max_length=60)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType))
    at: datetime = Field(sa_type=UTCDateTime)


class ReviewItem(SQLModel, table=True):
    """A message waiting for an operator (flow or message status `manual`)."""

    __tablename__ = "review_item"
    __table_args__ = (UniqueConstraint("workflow_id", "step_id", name="uq_review_item"),)

    id: str = Field(primary_key=True, max_length=40)
    workflow_id: str = Field(max_length=255)
    flow_id: str = Field(max_length=40, index=True)
    step_id: str = Field(max_length=100)
    profile_id: str = Field(max_length=40)
    channel: str = Field(sa_type=String(16))
    # pending | approved | rejected | expired (the enrollment ended first)
    status: str = Field(default="pending", sa_type=String(16), index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
