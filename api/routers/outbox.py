"""What Herald sent and why it did not: the embedded outbox's messages and every delivery row."""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import EngineDep, require_private_key
from api.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    decode_int_cursor,
    keyset_page,
)
from herald.core.db import session_scope
from models.delivery import Delivery, OutboxMessage
from models.enums import Channel

router = APIRouter(tags=["deliveries"], dependencies=[Depends(require_private_key)])


class OutboxMessagePublic(BaseModel):
    id: int
    delivery_id: str
    profile_id: str
    channel: Channel
    to: str
    subject: str | None
    body: str
    tracking: dict[str, Any]
    created_at: datetime


class DeliveryPublic(BaseModel):
    id: str
    idempotency_key: str
    run_kind: Literal["flow", "campaign"]
    run_id: str
    step_id: str
    workflow_id: str | None
    profile_id: str
    channel: Channel
    # sending: handed to the provider, answer not recorded yet; unknown: a worker died mid-send
    # and the channel's guarantee says not to resend (herald/delivery/guarantees.py).
    status: Literal["sent", "skipped", "failed", "sending", "unknown"]
    # Skipped: exited, no_consent, smart_sending, capped, ...; failed: template_error,
    # invalid_address, recipient_unsubscribed, recipient_refused, token_unregistered, ...
    reason: str | None
    transactional: bool
    provider: str | None
    provider_message_id: str | None
    to: str | None
    subject: str | None
    segments: int | None  # SMS and WhatsApp: message segments billed
    test: bool
    created_at: datetime
    sent_at: datetime | None


@router.get("/v1/outbox", summary="Messages the embedded outbox provider sent, newest first")
def list_outbox(
    engine: EngineDep,
    profile_id: Annotated[str | None, Query()] = None,
    channel: Annotated[Channel | None, Query()] = None,
    delivery_id: Annotated[str | None, Query()] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[OutboxMessagePublic]:
    before = decode_int_cursor(cursor)
    stmt = select(OutboxMessage)
    if profile_id is not None:
        stmt = stmt.where(OutboxMessage.profile_id == profile_id)
    if channel is not None:
        stmt = stmt.where(OutboxMessage.channel == channel)
    if delivery_id is not None:
        stmt = stmt.where(OutboxMessage.delivery_id == delivery_id)
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(
            session, stmt, OutboxMessage.id, limit, before, descending=True
        )
    return Page[OutboxMessagePublic](
        data=[
            OutboxMessagePublic.model_validate({**m.model_dump(), "to": m.to_address}) for m in page
        ],
        next_cursor=next_cursor,
    )


@router.get(
    "/v1/deliveries",
    summary="Delivery rows, newest first: what was sent, skipped or failed, and why",
)
def list_deliveries(
    engine: EngineDep,
    profile_id: Annotated[str | None, Query()] = None,
    run_kind: Annotated[Literal["flow", "campaign"] | None, Query()] = None,
    run_id: Annotated[str | None, Query(description="flow id or campaign id")] = None,
    step_id: Annotated[str | None, Query(description="flow step id or campaign message id")] = None,
    status: Annotated[
        Literal["sent", "skipped", "failed", "sending", "unknown"] | None, Query()
    ] = None,
    channel: Annotated[Channel | None, Query()] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[DeliveryPublic]:
    before = decode_cursor(cursor)
    stmt = select(Delivery)
    filters = (
        (Delivery.profile_id, profile_id),
        (Delivery.run_kind, run_kind),
        (Delivery.run_id, run_id),
        (Delivery.step_id, step_id),
        (Delivery.status, status),
        (Delivery.channel, channel),
    )
    for column, value in filters:
        if value is not None:
            stmt = stmt.where(column == value)
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(session, stmt, Delivery.id, limit, before, descending=True)
    return Page[DeliveryPublic](
        data=[DeliveryPublic.model_validate({**d.model_dump(), "to": d.to_address}) for d in page],
        next_cursor=next_cursor,
    )
