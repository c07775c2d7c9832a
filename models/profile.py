"""Profiles (one per person) and their per-channel consent with its history."""

from datetime import datetime
from typing import Any

from pydantic import field_validator, model_validator
from sqlalchemy import ForeignKey, String
from sqlmodel import Column, Field, SQLModel

from herald.profiles.normalize import normalize_email, normalize_phone, normalize_timezone
from models.enums import Channel, ConsentStatus
from models.types import JSONType, UTCDateTime, reject_unstorable, utcnow


class Profile(SQLModel, table=True):
    __tablename__ = "profile"

    id: str = Field(primary_key=True, max_length=40)
    # Identity, resolved in this order: external_id, email, phone, anonymous_id.
    external_id: str | None = Field(default=None, max_length=255, unique=True)
    email: str | None = Field(default=None, max_length=320, unique=True)
    phone: str | None = Field(default=None, max_length=20, unique=True)
    anonymous_id: str | None = Field(default=None, max_length=255, unique=True)
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    timezone: str | None = Field(default=None, max_length=64)
    push_tokens: list[str] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    properties: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Consent(SQLModel, table=True):
    __tablename__ = "consent"

    profile_id: str = Field(
        sa_column=Column(String(40), ForeignKey("profile.id", ondelete="CASCADE"), primary_key=True)
    )
    channel: Channel = Field(primary_key=True, sa_type=String(16))
    status: ConsentStatus = Field(sa_type=String(20))
    source: str = Field(default="api", max_length=100)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ConsentChange(SQLModel, table=True):
    """Append-only history: who changed consent, to what, when and through which source."""

    __tablename__ = "consent_change"

    id: int | None = Field(default=None, primary_key=True)
    profile_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("profile.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    channel: Channel = Field(sa_type=String(16))
    status: ConsentStatus = Field(sa_type=String(20))
    source: str = Field(default="api", max_length=100)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# ---- DTOs -------------------------------------------------------------------------------------


class ProfileIdentity(SQLModel):
    """The identifiers that find a profile; at least one is required wherever a profile is named."""

    external_id: str | None = Field(default=None, min_length=1, max_length=255)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    anonymous_id: str | None = Field(default=None, min_length=1, max_length=255)

    _storable = model_validator(mode="before")(classmethod(reject_unstorable))

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        return None if v is None else normalize_email(v)

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None) -> str | None:
        return None if v is None else normalize_phone(v)

    def has_identifier(self) -> bool:
        return any((self.external_id, self.email, self.phone, self.anonymous_id))


class ProfileAttributes(SQLModel):
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    timezone: str | None = Field(default=None, max_length=64)
    push_tokens: list[str] | None = Field(default=None, max_length=20)
    properties: dict[str, Any] | None = None

    _storable = model_validator(mode="before")(classmethod(reject_unstorable))

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else normalize_timezone(v)


class ProfileCreate(ProfileIdentity, ProfileAttributes):
    @model_validator(mode="after")
    def _needs_identifier(self):
        if not self.has_identifier():
            raise ValueError("at least one of external_id, email, phone, anonymous_id is required")
        return self


class ProfileUpdate(ProfileIdentity, ProfileAttributes):
    """PATCH body: only the fields sent change; a property set to null is removed."""


class ProfilePublic(SQLModel):
    id: str
    external_id: str | None
    email: str | None
    phone: str | None
    anonymous_id: str | None
    first_name: str | None
    last_name: str | None
    timezone: str | None
    push_tokens: list[str]
    properties: dict[str, Any]
    consent: dict[str, ConsentStatus] = {}
    created_at: datetime
    updated_at: datetime


class ConsentUpdate(SQLModel):
    status: ConsentStatus
    source: str = Field(default="api", min_length=1, max_length=100)

    @field_validator("status")
    @classmethod
    def _settable(cls, v: ConsentStatus) -> ConsentStatus:
        if v is ConsentStatus.never_subscribed:
            raise ValueError("consent can be set to 'subscribed' or 'unsubscribed' only")
        return v


class ConsentPublic(SQLModel):
    channel: Channel
    status: ConsentStatus
    source: str | None
    updated_at: datetime | None
