"""What HTTP providers share: their client's life cycle, how long a reply asked us to wait, and
reading a body of bounded size."""

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from herald.delivery.providers.base import Provider, ProviderUnavailable


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds to wait, never negative (RFC 9110 section 10.2.3: seconds or an
    HTTP-date); None when absent or unreadable. The send path waits at least this long before
    its next attempt (ProviderUnavailable.retry_after)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; one without a zone is garbage
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


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


def request_failed(what: str, exc: Exception) -> ProviderUnavailable:
    """A request that got no answer. Once it was written (a read timeout, a dropped
    connection), the provider may have acted on it: `maybe_sent`, so the send path leaves the
    message to the channel's guarantee instead of sending it again at once."""
    maybe = isinstance(
        exc, (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, TimeoutError)
    )
    return ProviderUnavailable(f"{what}: {exc!r}", maybe_sent=maybe)


class HttpProvider(Provider):
    """A provider that speaks HTTP: one keep-alive client per instance, made on first use (on
    the loop that sends, the provider hub's) and closed by `aclose`."""

    _client: httpx.AsyncClient | None = None

    def new_client(self) -> httpx.AsyncClient:
        raise NotImplementedError

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self.new_client()
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
