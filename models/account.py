"""Account-wide settings: one row, created by the first migration."""

from datetime import datetime

from sqlalchemy import text
from sqlmodel import Column, Field, SQLModel

from models.types import JSONType, UTCDateTime, utcnow

DEFAULT_SMART_SENDING_HOURS = {"email": 16, "sms": 24, "whatsapp": 24, "push": 24}
DEFAULT_CHANNELS = ["email", "sms", "whatsapp", "push"]


class Account(SQLModel, table=True):
    __tablename__ = "account"

    id: int = Field(default=1, primary_key=True)
    name: str = Field(default="Herald", max_length=200)
    timezone: str = Field(default="UTC", max_length=64)
    enabled_channels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CHANNELS), sa_column=Column(JSONType, nullable=False)
    )
    smart_sending_hours: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_SMART_SENDING_HOURS),
        sa_column=Column(JSONType, nullable=False),
    )
    quiet_hours_start: str = Field(default="21:00", max_length=5)
    quiet_hours_end: str = Field(default="08:00", max_length=5)
    # {"email": {"per_day": 3, "per_week": 10}}: empty means no caps.
    frequency_caps: dict[str, dict[str, int]] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )
    # {"email": {"marketing": "at_least_once"}}: overrides of the defaults (marketing at most
    # once, transactional at least once) for a delivery a worker died in the middle of.
    delivery_guarantees: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        sa_column=Column(JSONType, nullable=False, server_default=text("'{}'")),
    )
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
