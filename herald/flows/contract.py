"""The contract of a flow enrollment workflow: its ID, input, signals and query (pure)."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from herald.flows.graph import FlowDefinition

WORKFLOW_TYPE = "FlowEnrollment"
SIGNAL_EXIT = "exit"  # arg: reason (converted | operator | filter | flow_deleted ...)
SIGNAL_APPROVE = "approve"  # arg: step id of a message waiting in the review queue
SIGNAL_REJECT = "reject"  # arg: step id
SIGNAL_EVENT = "event"  # arg: metric the profile just performed (wait-for-event steps)
QUERY_STATE = "state"


def enrollment_workflow_id(flow_id: str, profile_id: str, entry_key: str) -> str:
    return f"flow/{flow_id}/{profile_id}/{entry_key}"


class TriggerContext(BaseModel):
    """The trigger, as templates and trigger splits see it."""

    type: str  # metric | list | segment | date_property
    metric: str | None = None
    event_id: int | None = None
    unique_id: str | None = None
    value: float | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    time: datetime | None = None
    list_id: str | None = None
    segment_id: str | None = None


class EnrollmentInput(BaseModel):
    flow_id: str
    flow_name: str
    version: int
    profile_id: str
    entry_key: str
    # The profile's timezone at entry (account timezone when unknown): delays use it.
    timezone: str = "UTC"
    definition: FlowDefinition
    trigger: TriggerContext
    # Whether the namespace has Herald's search attributes (HeraldStep is upserted per step).
    search_attributes: bool = True


class EnrollmentState(BaseModel):
    """What the `state` query returns."""

    flow_id: str
    version: int
    profile_id: str
    current_step: str | None
    status: str  # running | completed | exited | cancelled
    next_wake_at: datetime | None = None
    waiting_for: str | None = None  # timer | event | review | quiet_hours | webhook
    path: list[str] = Field(default_factory=list)
    exit_reason: str | None = None
