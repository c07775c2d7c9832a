"""What a webhook or internal-alert step hands its activity, and what comes back."""

from typing import Literal

from pydantic import BaseModel, Field


class WebhookCall(BaseModel):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str  # already rendered, JSON
    idempotency_key: str
    workflow_id: str
    step_id: str


class InternalAlertCall(BaseModel):
    via: Literal["email", "webhook"]
    to: str  # an email address or a URL
    subject: str | None = None
    body: str  # already rendered
    idempotency_key: str
    workflow_id: str
    step_id: str


class WebhookResult(BaseModel):
    status: Literal["delivered", "skipped"]
    http_status: int | None = None
    reason: str | None = None  # a short code (StepReason or http_<status>)
    detail: str | None = None  # in words, for the timeline
    response_bytes: int = 0  # how much of the response body was read (at most the limit)
