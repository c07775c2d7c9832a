"""The generic webhook channel: each rendered message is one JSON POST, signed per Standard
Webhooks 1.0, so any receiver can verify it with that spec's libraries.

Signing: `webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`
with the key the account's `whsec_` secret decodes to. The `webhook-id` derives from the
message's idempotency key, so every retry of one message carries the same id and the receiver
can drop repeats; `webhook-timestamp` is the attempt's time, as the spec asks.

The endpoint passes the same URL rules as webhook steps (herald/delivery/url_safety.py): https
only, no private or loopback addresses unless the operator allow-listed them in
`Settings.webhook_allow_hosts`, the request goes to the address that was checked, redirects are
not followed and at most `Settings.webhook_max_response_bytes` of the answer are read. The allow
list comes from the operator's settings, not from this config: whoever edits the account's
channel settings must not be able to open the worker's internal network.

Answers: 2xx -> receipt (the receiver's JSON "id" if it sends one, else the webhook-id);
400 / 404 / 410 / 422 and other 4xx -> ProviderRejected("provider_rejected"); 401 / 403 (the
receiver refuses our signature) and 3xx (the URL moved: update it) -> ProviderMisconfigured;
408, 429, 5xx, timeouts and connection errors -> ProviderUnavailable, honouring Retry-After.
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from herald.core.config import Settings
from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderError,
    ProviderLimits,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
)
from herald.delivery.providers.http_replies import (
    HttpProvider,
    read_at_most,
    request_failed,
    retry_after_seconds,
)
from herald.delivery.url_safety import UnsafeUrl, check_url

MESSAGE_EVENT = "message.created"  # the payload `type` of a message
CHECK_EVENT = "provider.check"  # the payload `type` of `check()`'s request

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the spec: symmetric secrets are at least 24 random bytes
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024  # Settings.webhook_max_response_bytes' default

# Headers the request's framing, destination and signature own; extra headers may not set them.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
_SNIPPET_CHARS = 200
_MAX_RECEIVER_ID_CHARS = 200


def signing_key(secret: str) -> bytes:
    """The HMAC key a `whsec_<base64>` secret serialises; ValueError saying what is wrong."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(
            f"the webhook secret must start with {SECRET_PREFIX!r} (Standard Webhooks format)"
        )
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        # Some generators leave the padding off; decoding is strict otherwise.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the webhook secret after {SECRET_PREFIX!r} is not base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the webhook secret decodes to {len(key)} bytes; Standard Webhooks asks for at "
            f"least {MIN_SECRET_BYTES}"
        )
    return key


def webhook_id_for(idempotency_key: str) -> str:
    """The same id on every attempt at one message; hex, so it never holds the spec's '.'."""
    return "msg_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one `v1` (HMAC-SHA256) signature."""
    signed = b".".join((webhook_id.encode(), str(timestamp).encode(), body))
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    secret: SecretStr  # whsec_<base64 of at least 24 random bytes>
    headers: dict[str, str] = Field(default_factory=dict)  # sent with every request
    # The spec recommends giving receivers 15-30 s to answer.
    timeout_seconds: float = Field(default=15.0, gt=0)
    # A receiver publishes no limits of its own: the operator sets what it can take.
    concurrency: int = Field(default=8, ge=1)
    per_second: float | None = Field(default=None, gt=0)

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str) -> str:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ValueError(f"invalid webhook url ({exc})") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("the webhook url must be an https:// url with a host")
        return url

    @field_validator("secret")
    @classmethod
    def _secret_is_whsec(cls, secret: SecretStr) -> SecretStr:
        signing_key(secret.get_secret_value())
        return secret

    @field_validator("headers")
    @classmethod
    def _headers_are_extra(cls, headers: dict[str, str]) -> dict[str, str]:
        reserved = sorted(name for name in headers if name.strip().lower() in _RESERVED_HEADERS)
        if reserved:
            raise ValueError(
                f"Herald sets these headers itself, they cannot be configured: {reserved}"
            )
        return headers


class WebhookProvider(HttpProvider):
    """`allow_hosts` and `max_response_bytes` are the operator's webhook settings (see
    `from_settings`); `verify` is httpx's TLS verification (tests pass their CA)."""

    name = "webhook"

    def __init__(
        self,
        config: WebhookProviderConfig,
        *,
        allow_hosts: Sequence[str] = (),
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.limits = ProviderLimits(concurrency=config.concurrency, per_second=config.per_second)
        self._key = signing_key(config.secret.get_secret_value())
        self._allow_hosts = list(allow_hosts)
        self._max_response_bytes = max_response_bytes
        self._verify = verify
        self._clock = clock

    @classmethod
    def from_settings(
        cls, config: WebhookProviderConfig, settings: Settings, **kwargs: Any
    ) -> "WebhookProvider":
        """The provider under the same URL rules and response cap as webhook steps."""
        return cls(
            config,
            allow_hosts=settings.webhook_allow_hosts,
            max_response_bytes=settings.webhook_max_response_bytes,
            **kwargs,
        )

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        webhook_id = webhook_id_for(message.idempotency_key)
        now = self._clock()
        body = _payload(
            MESSAGE_EVENT,
            now,
            {
                "delivery_id": message.delivery_id,
                "profile_id": message.profile_id,
                "channel": str(message.channel),
                "to": message.to_address,
                "subject": message.subject,
                "body": message.body,
                "text": message.text,
                "tracking": message.tracking,
                "test": message.test,
            },
        )
        response, content = await self._post(webhook_id, int(now), body)
        if response.is_success:
            return SendReceipt(provider_message_id=_receiver_id(content) or webhook_id)
        raise _refusal(response, content)

    async def check(self) -> None:
        """POSTs a signed `provider.check` event; the receiver must answer 2xx."""
        now = self._clock()
        webhook_id = f"msg_check_{uuid.uuid4().hex}"  # a new event each time: nothing to dedupe
        response, content = await self._post(webhook_id, int(now), _payload(CHECK_EVENT, now, {}))
        if response.is_success:
            return
        error = _refusal(response, content)
        if isinstance(error, ProviderRejected):
            raise ProviderMisconfigured(f"the webhook receiver refused the check: {error.detail}")
        raise error

    def new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.config.timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # a proxy would resolve the host again, past the URL check
            verify=self._verify,
        )

    async def _post(
        self, webhook_id: str, timestamp: int, body: bytes
    ) -> tuple[httpx.Response, bytes]:
        try:
            target = await asyncio.to_thread(check_url, self.config.url, self._allow_hosts)
        except UnsafeUrl as exc:
            if exc.reason.endswith("does not resolve"):  # DNS may answer on a later attempt
                raise ProviderUnavailable(f"webhook url: {exc.reason}") from exc
            raise ProviderMisconfigured(f"webhook url refused: {exc.reason}") from exc

        headers = httpx.Headers(
            {
                "User-Agent": "Herald-Webhook/1",
                # Compressed bodies could expand far past the size limit while being decoded.
                "Accept-Encoding": "identity",
            }
        )
        headers.update(self.config.headers)
        headers["Content-Type"] = "application/json"
        headers["webhook-id"] = webhook_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign(self._key, webhook_id, timestamp, body)
        headers["Host"] = target.host_header
        try:
            async with (
                asyncio.timeout(self.config.timeout_seconds),  # also bounds a slow-drip body
                self._http().stream(
                    "POST",
                    target.connect_url,
                    content=body,
                    headers=headers,
                    extensions=target.extensions,
                ) as response,
            ):
                content, _truncated = await read_at_most(response, self._max_response_bytes)
        except (httpx.RequestError, TimeoutError) as exc:
            raise request_failed("webhook request failed", exc) from exc
        return response, content


def _payload(event_type: str, now: float, data: dict[str, Any]) -> bytes:
    """The Standard Webhooks payload shape, minified: the bytes signed are the bytes sent."""
    timestamp = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    document = {"type": event_type, "timestamp": timestamp, "data": data}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _receiver_id(content: bytes) -> str | None:
    """The receiver's own id for the message, when its JSON answer has a usable "id"."""
    try:
        answer = json.loads(content)
    except ValueError:  # not JSON, or cut at the size limit
        return None
    if not isinstance(answer, dict):
        return None
    value = answer.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if 0 < len(text) <= _MAX_RECEIVER_ID_CHARS else None


def _refusal(response: httpx.Response, content: bytes) -> ProviderError:
    """The classified error for a non-2xx answer."""
    status = response.status_code
    snippet = content[: _SNIPPET_CHARS * 4].decode("utf-8", "replace")[:_SNIPPET_CHARS]
    detail = f"webhook answered HTTP {status}" + (f": {snippet}" if snippet else "")
    if 300 <= status < 400:
        # Standard Webhooks: a redirect is a failure; following it would also skip the URL check.
        location = response.headers.get("location", "")
        return ProviderMisconfigured(
            f"webhook answered HTTP {status} (redirect to {location!r}); redirects are not "
            "followed: update the webhook url"
        )
    if status in (401, 403):
        return ProviderMisconfigured(f"{detail} (does the receiver have the same secret?)")
    if status in (408, 429) or status >= 500:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return ProviderUnavailable(detail, retry_after=retry_after)
    if 400 <= status < 500:
        return ProviderRejected("provider_rejected", detail, provider_code=str(status))
    return ProviderUnavailable(detail)  # 1xx and other oddities: try again later
