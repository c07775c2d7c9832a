"""Email through Postmark's batch API: up to 500 complete messages per `POST /email/batch`.

Herald renders every recipient's message itself (Liquid, per profile), so what it hands over is a
batch of finished messages: Postmark's batch endpoint takes exactly that, and answers with one
result per message, in order (`ErrorCode` 0 and a `MessageID`, or the code of what was wrong).
Herald tracks opens and clicks itself, so Postmark's tracking is off on every message.

Each message carries `X-Herald-Delivery-Id`, a `Message-ID` derived from the idempotency key (the
same on every attempt, as over SMTP; Postmark's API passes custom headers through, but it does
not document whether it keeps a custom Message-ID, so the receipt is Postmark's own MessageID)
and `Metadata {"herald_delivery_id": ...}`, which Postmark echoes in its bounce, delivery and
engagement webhooks so they find the delivery.

Answers, per message unless the whole request failed:
- ErrorCode 0 -> receipt with Postmark's MessageID.
- 406 (inactive recipient: bounced, complained or unsubscribed at Postmark) ->
  ProviderRejected("recipient_suppressed"); other message codes (300 invalid email request,
  ...) -> ProviderRejected("provider_rejected", provider_code=<code>).
- codes about the account rather than the message (10 token, 400/401 sender signature,
  405 no credits, 412/413 account pending or not allowed to send) -> ProviderMisconfigured;
  100 (maintenance) and 429 -> ProviderUnavailable.
- the whole request: 401 -> ProviderMisconfigured; 422 -> its ErrorCode, as above, for every
  message of the batch; 429, 5xx, timeouts, connection errors -> ProviderUnavailable.
A batch that timed out may have been accepted: the send path's retry can then send it twice,
since Postmark takes no idempotency key.
"""

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from email.utils import formataddr
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from herald.delivery.html_text import email_parts
from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderError,
    ProviderLimits,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendOutcome,
    SendReceipt,
    not_started,
)
from herald.delivery.providers.http_replies import HttpProvider, request_failed, retry_after_seconds

MAX_BATCH_MESSAGES = 500  # Postmark: at most 500 messages per batch call...
MAX_BATCH_BYTES = 50 * 1000 * 1000  # ...and 50 MB per call, attachments included
MAX_MESSAGE_BYTES = 10 * 1000 * 1000  # a single email, as on POST /email
DELIVERY_ID_HEADER = "X-Herald-Delivery-Id"
DELIVERY_ID_METADATA = "herald_delivery_id"

# Postmark API error codes (developer docs, "API error codes").
INACTIVE_RECIPIENT = 406
_ACCOUNT_CODES = {
    10: "bad or missing server token",
    400: "sender signature not found",
    401: "sender signature not confirmed",
    405: "not allowed to send (out of credits?)",
    412: "account pending approval",
    413: "account may not send",
}
_TRANSIENT_CODES = {100: "Postmark is in maintenance", 429: "rate limit exceeded"}
# Headers the message fields already set; a template's header of the same name is left out.
_FIELD_HEADERS = frozenset({"from", "to", "cc", "bcc", "subject", "reply-to"})
_SNIPPET_CHARS = 200


class PostmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server_token: SecretStr  # the server's API token (X-Postmark-Server-Token)
    base_url: str = "https://api.postmarkapp.com"
    # Postmark separates transactional ("outbound") from broadcast streams: a marketing account
    # sets its broadcast stream's id here.
    message_stream: str = "outbound"
    from_email: str  # a confirmed sender signature; a message's own sender overrides it
    from_name: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    batch_size: int = Field(default=MAX_BATCH_MESSAGES, ge=1, le=MAX_BATCH_MESSAGES)
    # Postmark publishes no fixed request or per-second sending limit: it answers 429 when a
    # server sends too fast. A few batch calls at once (500 messages each) is plenty.
    concurrency: int = Field(default=4, ge=1)
    per_second: float | None = Field(default=None, gt=0)


class PostmarkProvider(HttpProvider):
    name = "postmark"

    def __init__(self, config: PostmarkConfig):
        self.config = config
        self.limits = ProviderLimits(concurrency=config.concurrency, per_second=config.per_second)

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        [outcome] = await self.send_many([message])
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    async def send_many(
        self, messages: Sequence[OutgoingMessage], *, deadline: float | None = None
    ) -> list[SendOutcome]:
        """Batches of at most `batch_size` messages (and 50 MB), `concurrency` batches at once;
        one outcome per message, in order."""
        outcomes: list[SendOutcome | None] = [None] * len(messages)
        encoded: list[tuple[int, bytes]] = []
        for index, message in enumerate(messages):
            item = json.dumps(self.build(message), separators=(",", ":")).encode()
            if len(item) > MAX_MESSAGE_BYTES:
                outcomes[index] = ProviderRejected(
                    "message_too_large",
                    f"{len(item)} bytes; Postmark takes at most {MAX_MESSAGE_BYTES} per email",
                )
            else:
                encoded.append((index, item))

        gate = self.concurrency_gate()

        async def one_batch(batch: list[tuple[int, bytes]]) -> None:
            async with gate:
                if deadline is not None and time.monotonic() >= deadline:
                    results: list[SendOutcome] = [not_started() for _ in batch]
                else:
                    results = await self._send_batch([item for _, item in batch])
            for (index, _), outcome in zip(batch, results, strict=True):
                outcomes[index] = outcome

        await asyncio.gather(*(one_batch(b) for b in _batches(encoded, self.config.batch_size)))
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(messages)  # every message was refused early or sent in a batch
        return done

    def build(self, message: OutgoingMessage) -> dict[str, Any]:
        """The Postmark message (the batch API's per-message JSON) for one rendered email."""
        sender = message.sender or self.config.from_email
        name = message.sender_name or (None if message.sender else self.config.from_name)
        parts = email_parts(message.body, message.text)
        headers = {k: v for k, v in message.headers.items() if k.lower() not in _FIELD_HEADERS}
        headers = _with_header(headers, "Message-ID", _message_id(message.idempotency_key, sender))
        headers = _with_header(headers, DELIVERY_ID_HEADER, message.delivery_id)
        email: dict[str, Any] = {
            "From": formataddr((name, sender)) if name else sender,
            "To": message.to_address,
            "Subject": message.subject or "",
            "TextBody": parts.text,
            "Headers": [{"Name": k, "Value": v} for k, v in headers.items()],
            "Metadata": {DELIVERY_ID_METADATA: message.delivery_id},
            "MessageStream": self.config.message_stream,
            "TrackOpens": False,  # Herald's own pixel and signed redirects do the tracking
            "TrackLinks": "None",
        }
        if parts.html is not None:
            email["HtmlBody"] = parts.html
        if message.reply_to:
            email["ReplyTo"] = message.reply_to
        return email

    async def check(self) -> None:
        """GET /server with the token: proves the token names a server."""
        try:
            response = await self._http().get("/server")
        except httpx.RequestError as exc:
            raise ProviderUnavailable(f"Postmark unreachable: {type(exc).__name__}") from exc
        if response.is_success:
            return
        error = _request_error(response)
        if isinstance(error, ProviderRejected):
            raise ProviderMisconfigured(f"Postmark refused GET /server: {error.detail}")
        raise error

    def new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.config.base_url,
            timeout=self.config.timeout_seconds,
            follow_redirects=False,
            headers={
                "Accept": "application/json",
                "X-Postmark-Server-Token": self.config.server_token.get_secret_value(),
            },
        )

    async def _send_batch(self, items: list[bytes]) -> list[SendOutcome]:
        body = b"[" + b",".join(items) + b"]"
        try:
            response = await self._http().post(
                "/email/batch", content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.RequestError as exc:
            error: ProviderError = request_failed("Postmark batch failed", exc)
            return [error] * len(items)
        if not response.is_success:
            return [_request_error(response)] * len(items)
        try:
            results = response.json()
        except ValueError:
            results = None
        if not isinstance(results, list) or len(results) != len(items):
            unreadable = ProviderUnavailable(
                f"Postmark answered the batch of {len(items)} with something other than "
                f"{len(items)} results: {_snippet(response)}"
            )
            return [unreadable] * len(items)
        return [_message_outcome(result) for result in results]


def _batches(items: list[tuple[int, bytes]], size: int) -> list[list[tuple[int, bytes]]]:
    """Consecutive batches of at most `size` items whose JSON array stays under 50 MB."""
    batches: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    current_bytes = 2  # the array's brackets
    for item in items:
        item_bytes = len(item[1]) + 1  # and its comma
        if current and (len(current) >= size or current_bytes + item_bytes > MAX_BATCH_BYTES):
            batches.append(current)
            current, current_bytes = [], 2
        current.append(item)
        current_bytes += item_bytes
    if current:
        batches.append(current)
    return batches


def _message_id(idempotency_key: str, sender: str) -> str:
    """The same Message-ID on every attempt at one (run, step, profile), as SmtpProvider's."""
    domain = sender.rpartition("@")[2].strip("<> ") or "herald.local"
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@{domain}>"


def _with_header(headers: dict[str, str], name: str, value: str) -> dict[str, str]:
    """headers with `name` set to value, replacing any spelling of it (names are
    case-insensitive)."""
    kept = {k: v for k, v in headers.items() if k.lower() != name.lower()}
    return kept | {name: value}


def _code_error(code: int, message: str) -> ProviderError:
    """The error a Postmark ErrorCode means, for a message or for a whole request."""
    detail = f"Postmark error {code}: {message}"
    if code == INACTIVE_RECIPIENT:
        return ProviderRejected("recipient_suppressed", detail, provider_code=str(code))
    if code in _ACCOUNT_CODES:
        return ProviderMisconfigured(f"{detail} ({_ACCOUNT_CODES[code]})")
    if code in _TRANSIENT_CODES:
        return ProviderUnavailable(f"{detail} ({_TRANSIENT_CODES[code]})")
    return ProviderRejected("provider_rejected", detail, provider_code=str(code))


def _message_outcome(result: Any) -> SendOutcome:
    if not isinstance(result, dict) or not isinstance(result.get("ErrorCode"), int):
        return ProviderUnavailable(f"Postmark answered an unreadable result: {result!r:.200}")
    code = result["ErrorCode"]
    if code == 0 and result.get("MessageID"):
        return SendReceipt(provider_message_id=str(result["MessageID"]))
    return _code_error(code, str(result.get("Message", "")))


def _request_error(response: httpx.Response) -> ProviderError:
    """The error for a non-2xx answer to the whole request."""
    status = response.status_code
    body = _error_body(response)
    if status == 401:
        return ProviderMisconfigured(
            f"Postmark refused the server token (HTTP 401{_describe(body)}): check server_token"
        )
    if status == 429 or status >= 500:
        return ProviderUnavailable(
            f"Postmark answered HTTP {status}{_describe(body)}",
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )
    if status == 422 and body is not None:
        return _code_error(body[0], body[1])
    if status == 404:
        return ProviderMisconfigured(f"Postmark answered HTTP 404 for {response.url}: base_url?")
    if 300 <= status < 400:
        return ProviderMisconfigured(
            f"Postmark answered HTTP {status} (redirect to "
            f"{response.headers.get('location', '')!r}): check base_url"
        )
    return ProviderRejected(
        "provider_rejected",
        f"Postmark answered HTTP {status}: {_snippet(response)}",
        provider_code=str(status),
    )


def _error_body(response: httpx.Response) -> tuple[int, str] | None:
    """(ErrorCode, Message) of Postmark's error JSON, when the answer is one."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("ErrorCode"), int):
        return body["ErrorCode"], str(body.get("Message", ""))
    return None


def _describe(body: tuple[int, str] | None) -> str:
    return f", error {body[0]}: {body[1]}" if body else ""


def _snippet(response: httpx.Response) -> str:
    return response.text[:_SNIPPET_CHARS]
