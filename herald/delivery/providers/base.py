"""What every channel provider is: a message in, a receipt or a classified error out.

Providers are async and hold their own connections (an SMTP pool, an httpx client) for the
worker's lifetime. They never see the database: the send path (herald/delivery/send_path.py)
claims each delivery before calling them and records their answer after, so no transaction is
open while a provider is on the wire.
"""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.enums import Channel


@dataclass(frozen=True)
class ProviderLimits:
    """What the provider's account allows; the send path stays inside both, on every worker."""

    concurrency: int = 8  # requests (or SMTP connections) in flight at once
    per_second: float | None = None  # messages per second; None: no published limit


@dataclass(frozen=True)
class WhatsAppTemplate:
    """An approved content template: business-initiated WhatsApp messages must use one."""

    content_sid: str
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutgoingMessage:
    delivery_id: str
    idempotency_key: str  # (run, step, profile): the same on every attempt at this message
    profile_id: str
    channel: Channel
    to_address: str  # email address, E.164 phone, or the first push token
    subject: str | None  # email subject; push notification title
    body: str  # email HTML (or plain text), SMS / WhatsApp text, push notification body
    text: str | None = None  # email plain-text part; derived from the HTML when None
    sender: str | None = None  # From address or number; the provider's default when None
    sender_name: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra email headers (List-*)
    push_tokens: tuple[str, ...] = ()  # every token of the profile (push)
    template: WhatsAppTemplate | None = None
    data: dict[str, str] = field(default_factory=dict)  # push data payload
    # {"$delivery_id", "run_kind", "run_id", "step_id"}: lets engagement events find the send.
    tracking: dict[str, Any] = field(default_factory=dict)
    test: bool = False  # a test send: marked, counted nowhere


@dataclass(frozen=True)
class SendReceipt:
    provider_message_id: str
    segments: int | None = None  # SMS segments billed, when the provider says
    dead_tokens: tuple[str, ...] = ()  # push tokens the provider no longer knows


class ProviderError(Exception):
    """Base of the three answers a provider gives instead of a receipt."""


class ProviderRejected(ProviderError):
    """This message can never be delivered as it is (invalid number, unsubscribed recipient,
    SMTP 5xx for the recipient, unregistered token, HTTP 400/404): fail it, do not retry.

    `reason` is a short code recorded on the delivery row (e.g. `invalid_address`,
    `recipient_unsubscribed`, `token_unregistered`, `provider_rejected`)."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        provider_code: str | None = None,
        dead_tokens: Sequence[str] = (),
    ):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.provider_code = provider_code
        self.dead_tokens = tuple(dead_tokens)


class ProviderUnavailable(ProviderError):
    """The provider could not take the message now (timeout, connection refused, 429, 5xx):
    retry with back-off, no sooner than `retry_after` seconds when the provider said so."""

    def __init__(self, detail: str, *, retry_after: float | None = None, maybe_sent: bool = False):
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        # The request may have reached the provider (a read timeout after it was written): the
        # send path keeps the claim in flight for the channel's guarantee instead of releasing.
        self.maybe_sent = maybe_sent


class ProviderMisconfigured(ProviderError):
    """The account's credentials or settings are wrong (401 on every call, AUTH refused): the
    whole channel is reported once instead of failing each message."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


SendOutcome = SendReceipt | ProviderError


def not_started() -> ProviderUnavailable:
    """The answer for a message its sender's time ran out before: nothing left, retry it."""
    # Retried after a second, not after the policy's growing back-off: nothing failed.
    return ProviderUnavailable(
        "not started before the send's deadline; sent on the retry", retry_after=1
    )


class Provider:
    """Base class: one message at a time by `send`; `send_many` runs them concurrently within
    `limits.concurrency`. Providers with a batch API override `send_many`."""

    name: str = "provider"
    limits: ProviderLimits = ProviderLimits()

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        raise NotImplementedError

    def concurrency_gate(self) -> asyncio.Semaphore:
        """The provider's requests in flight, shared by every `send_many` running at once on
        this event loop (two campaigns' pages, a test send beside them), so together they stay
        inside `limits.concurrency`. A semaphore belongs to its loop: a new loop, a new one."""
        loop = asyncio.get_running_loop()
        held = self.__dict__.get("_gate")
        if held is None or held[0] is not loop:
            held = (loop, asyncio.Semaphore(max(1, self.limits.concurrency)))
            self.__dict__["_gate"] = held
        return held[1]

    async def send_many(
        self, messages: Sequence[OutgoingMessage], *, deadline: float | None = None
    ) -> list[SendOutcome]:
        """One outcome per message, in order; never raises for one message's error. A message
        not started by `deadline` (time.monotonic()) is not sent: `not_started(...)`."""
        gate = self.concurrency_gate()

        async def one(message: OutgoingMessage) -> SendOutcome:
            async with gate:
                if deadline is not None and time.monotonic() >= deadline:
                    return not_started()
                try:
                    return await self.send(message)
                except ProviderError as exc:
                    return exc
                except Exception as exc:  # a bug or an unforeseen error: it may have gone out
                    return ProviderUnavailable(f"unexpected {exc!r}", maybe_sent=True)

        return list(await asyncio.gather(*(one(m) for m in messages)))

    async def check(self) -> None:
        """Verifies credentials with one cheap authenticated call; raises ProviderMisconfigured
        (what is wrong) or ProviderUnavailable (could not ask)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Closes pooled connections (worker shutdown)."""
