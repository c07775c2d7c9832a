"""Cursor pagination: opaque cursors over time-ordered string ids (see herald/core/ids.py)."""

import base64
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from api.errors import invalid

T = TypeVar("T")

LimitQuery = Annotated[int, Query(ge=1, le=500, description="page size (1-500)")]
CursorQuery = Annotated[str | None, Query(description="`next_cursor` of the previous page")]


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None


def encode_cursor(last_id: str | int) -> str:
    return base64.urlsafe_b64encode(str(last_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        value = "\x00"
    if "\x00" in value:  # PostgreSQL text cannot hold NUL: never a key we handed out
        raise invalid("cursor", "not a cursor returned by this API")
    return value
