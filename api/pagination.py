"""Cursor pagination: opaque cursors over time-ordered string ids (see herald/core/ids.py).

A cursor is the key of the last row of a page, base64url without padding: a string id, an
integer id, or a (time, id) pair for lists ordered by a timestamp ("<isoformat>|<id>").
`keyset_page` runs one page of a select after such a key; the routers decode the cursor first
(decode_cursor, decode_int_cursor, decode_time_cursor), before any other check of theirs.
"""

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

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


def decode_int_cursor(cursor: str | None) -> int | None:
    """The integer id a cursor holds (for tables keyed by an autoincrement id)."""
    if (value := decode_cursor(cursor)) is None:
        return None
    # isdigit() alone takes "²", which int() refuses.
    if not (value.isascii() and value.isdigit()):
        raise invalid("cursor", "not a cursor returned by this API")
    return int(value)


def encode_time_cursor(at: datetime, last_id: str) -> str:
    return encode_cursor(f"{at.isoformat()}|{last_id}")


def decode_time_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The (time, id) pair a cursor of a time-ordered list holds."""
    if (raw := decode_cursor(cursor)) is None:
        return None
    at, sep, last_id = raw.partition("|")
    try:
        if not sep:
            raise ValueError
        return datetime.fromisoformat(at), last_id
    except ValueError:
        raise invalid("cursor", "not a cursor returned by this API") from None


def keyset_page(
    session: Session,
    stmt: Select,
    key: Any,
    limit: int,
    after: Any,
    *,
    descending: bool = False,
    scalars: bool = True,
    last_key: Callable[[Any], Any] | None = None,
) -> tuple[list, str | None]:
    """One page of `stmt` in `key` order after the decoded cursor `after`, and the next cursor.

    `key` is a column, or a (time column, id column) pair with `after` a (time, id) pair.
    Reads one row more than `limit` to know whether there is a next page (None when not); its
    cursor is the key of the page's last row, read with `last_key` (default: the key columns'
    attributes of the row). `scalars=False` for a select of several entities or columns.
    """
    columns = key if isinstance(key, tuple) else (key,)
    stmt = stmt.order_by(*(c.desc() if descending else c for c in columns)).limit(limit + 1)
    if after is not None:
        stmt = stmt.where(_past(columns, after if isinstance(key, tuple) else (after,), descending))
    rows = list(session.scalars(stmt) if scalars else session.execute(stmt))
    page = rows[:limit]
    if len(rows) <= limit:
        return page, None
    last = last_key(page[-1]) if last_key else tuple(getattr(page[-1], c.key) for c in columns)
    if isinstance(key, tuple):
        return page, encode_time_cursor(*last)
    return page, encode_cursor(last if last_key else last[0])


def _past(columns: tuple, values: tuple, descending: bool):
    """Rows after `values` in (columns...) order: (a, b) > (x, y) is a > x or (a = x and b > y)."""
    (column, value), rest = (columns[0], values[0]), (columns[1:], values[1:])
    beyond = column < value if descending else column > value
    if not rest[0]:
        return beyond
    return or_(beyond, and_(column == value, _past(*rest, descending)))
