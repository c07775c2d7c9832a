"""Static lists and their memberships."""

from datetime import datetime

from pydantic import model_validator
from sqlalchemy import ForeignKey, String
from sqlmodel import Column, Field, SQLModel

from models.types import UTCDateTime, reject_nul, utcnow


class ProfileList(SQLModel, table=True):
    __tablename__ = "profile_list"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ListMembership(SQLModel, table=True):
    __tablename__ = "list_membership"

    list_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("profile_list.id", ondelete="CASCADE"), primary_key=True
        )
    )
    profile_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("profile.id", ondelete="CASCADE"), primary_key=True, index=True
        )
    )
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# ---- DTOs -------------------------------------------------------------------------------------

MAX_MEMBERS_PER_CALL = 1000


class ListCreate(SQLModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)

    _no_nul = model_validator(mode="before")(classmethod(reject_nul))


class ListUpdate(SQLModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)

    _no_nul = model_validator(mode="before")(classmethod(reject_nul))


class ListPublic(SQLModel):
    id: str
    name: str
    description: str
    member_count: int = 0
    created_at: datetime
    updated_at: datetime


class MembersChange(SQLModel):
    profile_ids: list[str] = Field(min_length=1, max_length=MAX_MEMBERS_PER_CALL)


class MembersChanged(SQLModel):
    changed: int  # rows actually added (or removed); already-members are not counted twice
    unchanged: int
