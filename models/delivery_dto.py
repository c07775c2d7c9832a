"""What the shared `deliver` activity takes and returns (flows and campaigns alike)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from herald.flows.graph import MessageContent, ProfileCondition
from models.enums import Channel, DeliveryStatus


class DeliveryRequest(BaseModel):
    # Derived in the workflow (never from attempt numbers): unique in `delivery`.
    idempotency_key: str = Field(max_length=400)
    run_kind: Literal["flow", "campaign"]
    run_id: str  # flow id or campaign id
    step_id: str  # flow step id or campaign message id
    workflow_id: str | None = None  # flow: the enrollment whose exit state is checked
    profile_id: str
    channel: Channel
    content: MessageContent
    smart_sending: bool = True
    transactional: bool = False
    # Liquid variables besides `profile`: e.g. {"event": {...trigger...}, "flow": {...}}.
    context: dict[str, Any] = Field(default_factory=dict)
    # Re-checked at send time; failing them skips with reason `filter`.
    filters: list[ProfileCondition] = Field(default_factory=list)
    # Segment-triggered flows re-check membership at send time (reason `segment`).
    segment_id: str | None = None


class DeliveryResult(BaseModel):
    # held: inside quiet hours; nothing recorded, ask again at hold_until.
    status: DeliveryStatus
    reason: str | None = None
    delivery_id: str | None = None
    hold_until: datetime | None = None
