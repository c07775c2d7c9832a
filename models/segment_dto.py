"""What the segments API accepts and returns."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.enums import SegmentStatus
from models.types import reject_unstorable


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _storable = model_validator(mode="before")(classmethod(reject_unstorable))


class SegmentCreate(_In):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    # A SegmentDefinition (herald/segments/definition.py); validated by the store, which names
    # each problem's field as `definition.all_of[0].any_of[1].operator`.
    definition: dict[str, Any]


class SegmentUpdate(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    definition: dict[str, Any] | None = None


class SegmentStatusChange(_In):
    status: SegmentStatus


class SegmentPreviewIn(_In):
    definition: dict[str, Any]
    sample_size: int = Field(default=20, ge=0, le=100)


class SegmentPublic(BaseModel):
    id: str
    name: str
    description: str
    status: SegmentStatus
    definition: dict[str, Any]
    version: int
    origin: dict[str, Any] | None
    member_count: int
    computed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SegmentPreview(BaseModel):
    count: int
    sample: list[str]
    computed_at: datetime
