"""What the enrollment workflow hands its local activities (pure DTOs)."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from herald.enrollment import TriggerContext
from herald.flow_graph import ProfileCondition, Step
from models.enums import Channel


class StepRecord(BaseModel):
    """One timeline line; `at` is workflow time, so replays and retries write the same row."""

    step_id: str
    step_type: str
    outcome: str  # entered | processed | skipped | held | queued | exited | failed
    reason: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class CloseRequest(BaseModel):
    workflow_id: str
    status: str  # running (a flush) | completed | exited | cancelled
    exit_reason: str | None = None
    step_id: str | None = None
    at: datetime
    records: list[StepRecord] = Field(default_factory=list)


class ConditionRequest(BaseModel):
    profile_id: str
    conditions: list[ProfileCondition]
    records: list[StepRecord] = Field(default_factory=list)
    workflow_id: str | None = None


class GateRequest(BaseModel):
    workflow_id: str
    flow_id: str
    profile_id: str
    step_id: str
    channel: Channel
    message_status: str | None
    at: datetime
    records: list[StepRecord] = Field(default_factory=list)


class ActionRequest(BaseModel):
    workflow_id: str
    profile_id: str
    step: Step
    trigger: TriggerContext
    flow_id: str
    flow_name: str
    records: list[StepRecord] = Field(default_factory=list)
