"""Deliveries (one row per run, step and profile) and the embedded outbox channel provider.

`delivery.idempotency_key` is unique: whatever retries or crashes happen, a (run, step, profile)
gets at most one delivery row, and a message is handed to a provider only together with it.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String
from sqlmodel import Column, Field, SQLModel

from models.types import JSONType, UTCDateTime, utcnow


class Delivery(SQLModel, table=True):
    __tablename__ = "delivery"
    __table_args__ = (
        # Smart sending and frequency caps look up a profile's recent sends per channel.
        Index("ix_delivery_profile_channel_sent", "profile_id", "channel", "sent_at"),
        Index("ix_delivery_run_step", "run_kind", "run_id", "step_id", "status"),
    )

    id: str = Field(primary_key=True, max_length=40)
    # flow:<workflow id>:<step id> or campaign:<campaign id>:<message id>:<profile id>
    idempotency_key: str = Field(max_length=400, unique=True)
    run_kind: str = Field(sa_type=String(16))  # flow | campaign
    run_id: str = Field(max_length=255)  # flow id or campaign id
    step_id: str = Field(max_length=100)  # flow step id or campaign message id
    workflow_id: str | None = Field(default=None, max_length=255)
    profile_id: str = Field(max_length=40)
    channel: str = Field(sa_type=String(16))
    # sent | skipped | failed | sending | unknown (DeliveryStatus)
    status: str = Field(sa_type=String(16))
    reason: str | None = Field(default=None, max_length=60)
    transactional: bool = Field(default=False)
    provider: str | None = Field(default=None, max_length=40)
    provider_message_id: str | None = Field(default=None, max_length=255)
    to_address: str | None = Field(default=None, max_length=400)
    subject: str | None = Field(default=None, max_length=998)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # SMS and WhatsApp: message segments (GSM-7 160/153, UCS-2 70/67), as billed.
    segments: int | None = Field(default=None)
    # A test send: marked, and counted by no report, smart sending, cap or exit.
    test: bool = Field(default=False)
    # Wall time the current attempt claimed the row (`sending`): a retry leaves a younger claim
    # to its attempt, and an attempt records only onto its own claim (herald/delivery/send_path.py).
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class OutboxMessage(SQLModel, table=True):
    """What the embedded `outbox` provider "sends": kept for `GET /v1/outbox` and demos."""

    __tablename__ = "message_outbox"

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    delivery_id: str = Field(max_length=40, unique=True)
    profile_id: str = Field(max_length=40, index=True)
    channel: str = Field(sa_type=String(16))
    to_address: str = Field(max_length=400)
    subject: str | None = Field(default=None, max_length=998)
    body: str
    # Tracking data every message carries ($delivery_id, run, step) for engagement events.
    tracking: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
