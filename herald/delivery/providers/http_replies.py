"""Reading an HTTP provider's reply: how long it asked us to wait, and a body of bounded size."""

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds to wait (RFC 9110: delay-seconds or an HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text) if int(text) > 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    delay = (when - (now or datetime.now(UTC))).total_seconds()
    return delay if delay > 0 else None


async def read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Reads a streamed body until it ends or reaches limit bytes; True when it was cut.

    A receiver we do not control could answer with an endless body; leaving the stream's
    context afterwards closes the connection, so the rest is never read.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False
