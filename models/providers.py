"""The provider each channel uses, with its configuration (secrets encrypted at rest)."""

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlmodel import Column, Field, SQLModel

from models.types import JSONType, UTCDateTime, utcnow


class ChannelProviderSetting(SQLModel, table=True):
    """One row per channel that does not use the embedded outbox (no row: the outbox, or the
    provider the environment configures; see herald/delivery/provider_settings.py)."""

    __tablename__ = "channel_provider"

    channel: str = Field(primary_key=True, sa_type=String(16))
    provider: str = Field(max_length=40)  # smtp | postmark | twilio | fcm | webhook
    # The provider's config; every secret field holds a Fernet token, never the secret.
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType))
    # ok | misconfigured: set when a send or a check found the credentials refused.
    state: str = Field(default="ok", sa_type=String(16))
    state_detail: str | None = Field(default=None, max_length=1000)
    state_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ProviderPace(SQLModel, table=True):
    """The next free send slot of a channel's provider, shared by every worker: a sender
    reserves a slot for a chunk of messages here before it sends (herald/delivery/pace.py)."""

    __tablename__ = "provider_pace"

    channel: str = Field(primary_key=True, sa_type=String(16))
    next_at: datetime = Field(sa_type=UTCDateTime)
