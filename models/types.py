"""Column types that behave the same on SQLite and PostgreSQL, and values PostgreSQL refuses."""

import math
import re
from datetime import UTC, datetime
from typing import Any

from pydantic_core import PydanticCustomError
from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable, compact), plain JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, always returns aware UTC: SQLite keeps no offset, so we normalise."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first value in a JSON document that PostgreSQL cannot store, as (path, reason).

    PostgreSQL text and JSONB refuse NUL characters and lone UTF-16 surrogates (they are not
    Unicode scalar values, so they have no UTF-8 form), and JSONB has no NaN or Infinity.
    Paths read like the API's error fields: `properties.cart.items[1]`.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return path, "contains a NUL character (\\u0000)"
        if _SURROGATE.search(value):
            return path, "contains a lone UTF-16 surrogate (not a Unicode character)"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return path, "must be a finite number (JSON has no NaN or Infinity)"
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (found := unstorable(key, path)) is not None:
                # Named by its parent: the key itself cannot be echoed in the answer.
                return path, f"has a key that {found[1]}"
            if (found := unstorable(item, f"{path}.{key}" if path else str(key))) is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if (found := unstorable(item, f"{path}[{i}]")) is not None:
                return found
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def reject_unstorable(cls, data):
    """Before-validator for DTOs: refuse what PostgreSQL cannot store, naming where it is.

    The error's context carries the path, so api.errors reports it as the field.
    """
    if (found := unstorable(data)) is not None:
        path, reason = found
        context = {"path": path, "where": path or "the body", "reason": reason}
        raise PydanticCustomError("unstorable_value", "{where} {reason}", context)
    return data


# The first check was for NUL only; DTOs across models/ still use this name.
reject_nul = reject_unstorable
