"""What the flows and enrollments API takes and returns (the tables are in models/flows.py)."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from herald.flows.contract import EnrollmentState
from herald.flows.graph import FlowDefinition
from models.enums import EnrollmentStatus, FlowStatus, ReviewStatus
from models.types import reject_unstorable


class FlowDefinitionIn(FlowDefinition):
    """A definition as the API accepts it: PostgreSQL cannot store NUL, so it is refused here."""

    _storable = model_validator(mode="before")(classmethod(reject_unstorable))

    def definition(self) -> FlowDefinition:
        return FlowDefinition.model_validate(
            self.model_dump(include=set(FlowDefinition.model_fields))
        )


class FlowCreate(FlowDefinitionIn):
    """A new flow: its name and status, and its first definition inline."""

    name: str = Field(min_length=1, max_length=200)
    status: FlowStatus = FlowStatus.draft


class FlowUpdate(BaseModel):
    """Name and status only: the definition is replaced (and versioned) by PUT .../definition."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    status: FlowStatus | None = None

    _storable = model_validator(mode="before")(classmethod(reject_unstorable))


class FlowSummary(BaseModel):
    id: str
    name: str
    status: FlowStatus
    trigger_type: str
    # Metric name, list id, segment id or date property name, depending on trigger_type.
    trigger_key: str | None
    exit_metric: str | None
    version: int  # the newest version: what new enrollments start on
    created_at: datetime
    updated_at: datetime


class FlowPublic(FlowSummary):
    definition: FlowDefinition


class FlowVersionPublic(BaseModel):
    flow_id: str
    version: int
    definition: FlowDefinition
    created_at: datetime


# ---- enrollments --------------------------------------------------------------------------------


class EnrollmentPublic(BaseModel):
    workflow_id: str
    flow_id: str
    version: int
    profile_id: str
    entry_key: str
    status: EnrollmentStatus
    current_step: str | None
    exit_reason: str | None
    trigger: dict[str, Any]
    started_at: datetime
    ended_at: datetime | None


class TimelineEntry(BaseModel):
    step_id: str
    step_type: str
    # entered | processed | skipped | held | queued | exited
    outcome: str
    reason: str | None
    detail: dict[str, Any]
    at: datetime


class EnrollmentDetail(EnrollmentPublic):
    timeline: list[TimelineEntry]
    # The workflow's own answer (current step, next wake-up, path); null when the enrollment has
    # ended or Temporal could not be asked.
    live: EnrollmentState | None = None


class ReviewItemPublic(BaseModel):
    id: str
    workflow_id: str
    flow_id: str
    step_id: str
    profile_id: str
    channel: str
    status: ReviewStatus
    created_at: datetime
    decided_at: datetime | None


# ---- report -------------------------------------------------------------------------------------


class StepReport(BaseModel):
    step_id: str
    step_type: str | None
    entered: int = 0
    processed: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)  # by reason
    exited: dict[str, int] = Field(default_factory=dict)  # by reason
    queued: int = 0
    held: int = 0
    deliveries: dict[str, int] = Field(default_factory=dict)  # by delivery status


class FlowReport(BaseModel):
    flow_id: str
    # The newest version's steps in definition order, then steps only older versions had.
    steps: list[StepReport]
