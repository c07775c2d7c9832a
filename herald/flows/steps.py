"""What the enrollment workflow hands its local activities (pure DTOs)."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity

from herald.flows.contract import TriggerContext
from herald.flows.graph import ProfileCondition, Step
from models.enums import Channel
from models.webhook_dto import InternalAlertCall, WebhookCall

# enrollment_step.reason and delivery.reason are this long: codes, never free text.
REASON_MAX = 60


class StepReason(StrEnum):
    """Why a step was skipped or failed, besides the delivery policy's Skip/FailReason.

    Webhook steps answered with a 3xx/4xx record `http_<status>`; the human detail of any
    reason (the refused host, the SMTP answer, the database error) goes in the line's detail.
    """

    draft = "draft"  # the message's own status
    flow_draft = "flow_draft"
    flow_deleted = "flow_deleted"
    manual_review = "manual_review"
    rejected = "rejected"
    profile_deleted = "profile_deleted"
    list_deleted = "list_deleted"
    unsafe_url = "unsafe_url"
    smtp_rejected = "smtp_rejected"
    # Retried for the step's whole time budget (24 h) without an answer that ended it.
    webhook_gave_up = "webhook_gave_up"
    # A permanent error (herald/core/activity_errors.py): the step failed, the walk goes on.
    error = "error"


class Proceed(StrEnum):
    """A local activity's answer when its step goes ahead; any other answer is a StepReason."""

    send = "send"  # prepare_message: the message may go out now
    queue = "queue"  # prepare_message: it waits in the review queue
    done = "done"  # apply_profile_action: the profile was changed


class ReviewAnswer(StrEnum):
    """What review_decision finds: the item's status, or `cancelled` once the enrollment ended."""

    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    expired = "expired"
    cancelled = "cancelled"


class StepOutcome(StrEnum):
    """What one timeline line (enrollment_step.outcome) says happened at its step."""

    entered = "entered"  # the enrollment started here
    processed = "processed"  # the step did its work (sent, waited, branched, changed the profile)
    skipped = "skipped"  # the step was passed over; the line's reason says why
    held = "held"  # a text waits for quiet hours to end
    queued = "queued"  # a message waits in the review queue
    exited = "exited"  # the enrollment ended here; the reason is its exit reason
    failed = "failed"  # a permanent error: the step failed, the walk goes on
    unknown = "unknown"  # a worker died mid-send; the delivery row is left `unknown` for review


class StepRecord(BaseModel):
    """One timeline line; `at` is workflow time, so replays and retries write the same row."""

    step_id: str
    step_type: str
    outcome: str  # a StepOutcome
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


# Workflows call these by method reference (names and result types come from here); the
# implementing class in activities/ subclasses it and decorates its methods with the same names.
class FlowActivitiesContract:
    """The local activities of the enrollment workflow (activities/flows.py)."""

    @activity.defn(name="record_steps")
    def record_steps(self, request: CloseRequest) -> None:
        raise NotImplementedError

    @activity.defn(name="close_enrollment")
    def close_enrollment(self, request: CloseRequest) -> None:
        raise NotImplementedError

    @activity.defn(name="evaluate_conditions")
    def evaluate_conditions(self, request: ConditionRequest) -> bool:
        raise NotImplementedError

    @activity.defn(name="prepare_message")
    def prepare_message(self, request: GateRequest) -> Proceed | StepReason:
        raise NotImplementedError

    @activity.defn(name="review_decision")
    def review_decision(self, request: GateRequest) -> ReviewAnswer:
        raise NotImplementedError

    @activity.defn(name="apply_profile_action")
    def apply_profile_action(self, request: ActionRequest) -> Proceed | StepReason:
        raise NotImplementedError

    @activity.defn(name="prepare_webhook")
    def prepare_webhook(self, request: ActionRequest) -> WebhookCall | InternalAlertCall:
        raise NotImplementedError
