"""Account settings as the API reads and writes them."""

import re

from pydantic import BaseModel, Field, StrictInt, field_validator, model_validator

from herald.profiles.normalize import normalize_timezone
from models.enums import Channel, Guarantee
from models.types import reject_unstorable

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class FrequencyCap(BaseModel):
    # StrictInt here and for smart-sending hours: pydantic would read true as 1, "24" as 24.
    per_day: StrictInt | None = Field(default=None, ge=1, le=100)
    per_week: StrictInt | None = Field(default=None, ge=1, le=500)


class ChannelGuarantees(BaseModel):
    """What a retry does with a message a dead worker may or may not have sent
    (herald/delivery/guarantees.py): defaults at_most_once for marketing, at_least_once for
    transactional."""

    model_config = {"extra": "forbid"}

    marketing: Guarantee | None = None
    transactional: Guarantee | None = None


class AccountSettings(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    timezone: str
    enabled_channels: list[Channel]
    smart_sending_hours: dict[Channel, int]
    quiet_hours_start: str
    quiet_hours_end: str
    frequency_caps: dict[Channel, FrequencyCap]
    delivery_guarantees: dict[Channel, ChannelGuarantees]


class AccountUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: str | None = None
    enabled_channels: list[Channel] | None = None
    smart_sending_hours: dict[Channel, StrictInt] | None = None
    quiet_hours_start: str | None = None
    quiet_hours_end: str | None = None
    frequency_caps: dict[Channel, FrequencyCap] | None = None
    delivery_guarantees: dict[Channel, ChannelGuarantees] | None = None

    _storable = model_validator(mode="before")(classmethod(reject_unstorable))

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else normalize_timezone(v)

    @field_validator("quiet_hours_start", "quiet_hours_end")
    @classmethod
    def _hhmm(cls, v: str | None) -> str | None:
        if v is not None and not _HHMM.match(v):
            raise ValueError("use 24-hour HH:MM, e.g. 21:00")
        return v

    @field_validator("smart_sending_hours")
    @classmethod
    def _window(cls, v: dict[Channel, int] | None) -> dict[Channel, int] | None:
        for channel, hours in (v or {}).items():
            if not 0 <= hours <= 168:
                raise ValueError(f"{channel}: the window must be 0-168 hours")
        return v
