"""Channel providers: what hands a rendered message to the outside world.

A provider's `send` runs inside the transaction that records the message's delivery row, so the
embedded `OutboxProvider` stores the message atomically with it, and an external provider (SMTP)
runs while that row's idempotency key is claimed but not yet committed.
"""

import asyncio
import hashlib
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol

import aiosmtplib
from sqlmodel import Session

from herald.core.config import Settings
from models.delivery import OutboxMessage
from models.enums import Channel


@dataclass(frozen=True)
class OutgoingMessage:
    delivery_id: str
    idempotency_key: str
    profile_id: str
    channel: Channel
    to_address: str
    subject: str | None
    body: str
    sender: str | None = None
    # {"$delivery_id", "run_kind", "run_id", "step_id"}: lets engagement events find the send.
    tracking: dict[str, Any] = field(default_factory=dict)


class ProviderRejected(Exception):
    """The provider refused this message for good (an SMTP 5xx): retrying cannot help."""


class ProviderUnavailable(Exception):
    """The provider could not take the message now (refused connection, 4xx): retry later."""


class ChannelProvider(Protocol):
    name: str

    def send(self, session: Session, message: OutgoingMessage) -> str:
        """Sends `message`; returns the provider's id for it. Raises ProviderRejected or
        ProviderUnavailable; `session` is the delivery row's open transaction."""
        ...


class OutboxProvider:
    """The embedded provider: the message is a `message_outbox` row, listed by GET /v1/outbox."""

    name = "outbox"

    def send(self, session: Session, message: OutgoingMessage) -> str:
        row = OutboxMessage(
            delivery_id=message.delivery_id,
            profile_id=message.profile_id,
            channel=message.channel,
            to_address=message.to_address,
            subject=message.subject,
            body=message.body,
            tracking=message.tracking,
        )
        session.add(row)
        session.flush()
        return str(row.id)


class SmtpProvider:
    """Email over SMTP (aiosmtplib), one connection per message.

    The X-Herald-Delivery-Id header carries the delivery id, so bounces and replies can be
    matched to the delivery. The Message-ID derives from the idempotency key, so it is the same
    on every attempt at one (run, step, profile), and receivers that dedupe on it drop a resend.
    """

    name = "smtp"

    def __init__(self, settings: Settings):
        self.settings = settings

    def send(self, session: Session, message: OutgoingMessage) -> str:
        email = self.build(message)
        # Activities run in worker threads, which have no event loop of their own.
        asyncio.run(self.submit(email))
        return email["Message-ID"]

    def build(self, message: OutgoingMessage) -> EmailMessage:
        sender = message.sender or self.settings.smtp_sender
        domain = sender.rpartition("@")[2] or "herald.local"
        email = EmailMessage()
        email["From"] = sender
        email["To"] = message.to_address
        email["Subject"] = message.subject or ""
        email["Date"] = formatdate(localtime=False)
        key_hash = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:32]
        email["Message-ID"] = f"<{key_hash}@{domain}>"
        email["X-Herald-Delivery-Id"] = message.delivery_id
        html = message.body.lstrip().startswith("<")
        email.set_content(message.body, subtype="html" if html else "plain")
        return email

    async def submit(self, email: EmailMessage) -> None:
        """Hands a built message to the SMTP server (for callers already on an event loop)."""
        s = self.settings
        try:
            await aiosmtplib.send(
                email,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username or None,
                password=s.smtp_password or None,
                use_tls=s.smtp_tls == "tls",
                start_tls={"starttls": True, "none": False}.get(s.smtp_tls),
                timeout=s.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            if codes and all(code >= 500 for code in codes):
                raise ProviderRejected(f"recipient refused: {exc.recipients[0].message}") from exc
            raise ProviderUnavailable(f"recipient deferred: {exc}") from exc
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
            if exc.code >= 500:
                raise ProviderRejected(f"{exc.code} {exc.message}") from exc
            raise ProviderUnavailable(f"{exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Connection problems, timeouts, 4xx, and 5xx about the sender or the login: the
            # server or its configuration is at fault, not this message, so it is retried.
            raise ProviderUnavailable(f"SMTP server {s.smtp_host}:{s.smtp_port}: {exc}") from exc


def providers_for(settings: Settings) -> dict[Channel, ChannelProvider]:
    """The provider per channel: the outbox for all, SMTP for email when configured."""
    outbox = OutboxProvider()
    providers: dict[Channel, ChannelProvider] = {channel: outbox for channel in Channel}
    if settings.email_provider == "smtp":
        providers[Channel.email] = SmtpProvider(settings)
    return providers
