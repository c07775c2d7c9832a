"""Email over SMTP: one relay (Amazon SES, Mailgun, Postmark, SendGrid or any MTA), a pool of
open connections reused across messages.

A message costs four round trips on an open connection and several more (TCP, TLS, EHLO, AUTH)
on a new one, so the pool keeps up to `pool_size` connections open and hands each to one sender
at a time. The Message-ID derives from the idempotency key, so every attempt at one (run, step,
profile) carries the same one and receivers that dedupe on it drop a resend; the
X-Herald-Delivery-Id header lets bounces and replies find their delivery.
"""

import asyncio
import contextlib
import functools
import hashlib
import re
import socket
import ssl
from dataclasses import dataclass
from email.utils import formataddr, formatdate
from typing import Literal

import aiosmtplib
from aiosmtplib.email import parse_address
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from herald.delivery.providers import mime
from herald.delivery.providers.base import (
    OutgoingMessage,
    Provider,
    ProviderError,
    ProviderLimits,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
)

# Set by build(); a message's extra headers may not replace them.
_BUILT_HEADERS = frozenset(
    h.lower()
    for h in (
        "From", "To", "Reply-To", "Subject", "Date", "Message-ID", "X-Herald-Delivery-Id",
        "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    )
)  # fmt: skip


# An RFC 3463 enhanced status code: class.subject.detail; subject 1 is about the address.
_ENHANCED_CODE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class SmtpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(587, ge=1, le=65535)  # the submission port (STARTTLS)
    username: str | None = None  # None: the relay does not ask for AUTH
    password: SecretStr | None = None
    # "starttls": upgrade a plain connection (port 587); "tls": TLS from the first byte (465).
    tls: Literal["none", "starttls", "tls"] = "starttls"
    sender: str  # the From address when a message names none
    sender_name: str | None = None
    reply_to: str | None = None
    timeout_seconds: float = Field(30.0, gt=0)  # per SMTP command, and for connecting
    # Connections open at once, which is also how many messages are in flight. A few
    # connections already carry dozens of messages a second, and relays answer 421 to, or
    # throttle, clients that open many; raise it only for a relay that says it allows more.
    pool_size: int = Field(4, ge=1)
    per_second: float | None = Field(None, gt=0)  # the account's send rate, when it has one
    # Relays cap the messages one connection may carry (SES answers "421 Maximum message count
    # per session reached"; AWS also advises against long-lived connections), so a connection
    # that has carried this many is closed with QUIT and a fresh one opened.
    max_messages_per_connection: int = Field(100, ge=1)
    # Check the relay's certificate and host name. Turn off only for a relay on a network you
    # trust that has no certificate a CA signed; `ca_file` trusts a private CA instead.
    validate_certs: bool = True
    ca_file: str | None = None  # PEM bundle of CAs to trust; the system's when None
    local_hostname: str | None = None  # the EHLO name; the machine's FQDN when None


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    messages: int = 0  # messages it has carried


class SmtpProvider(Provider):
    name = "smtp"

    def __init__(self, config: SmtpConfig):
        self.config = config
        self.limits = ProviderLimits(concurrency=config.pool_size, per_second=config.per_second)
        # A sender holds a slot while it holds a connection, and opens one only when none is
        # idle, so idle + busy connections never exceed pool_size.
        self._slots = asyncio.Semaphore(config.pool_size)
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the one the pool belongs to
        self._local_hostname = config.local_hostname

    # Building the message

    def build(self, message: OutgoingMessage, utf8: bool = False) -> tuple[bytes, str]:
        """The message as sent, and its Message-ID. `utf8`: it goes with SMTPUTF8."""
        config = self.config
        sender = message.sender or config.sender
        domain = sender.rpartition("@")[2] or "herald.local"
        key_hash = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:32]
        message_id = f"<{key_hash}@{domain}>"
        headers = [
            ("From", formataddr((message.sender_name or config.sender_name, sender))),
            ("To", message.to_address),
        ]
        if reply_to := message.reply_to or config.reply_to:
            headers.append(("Reply-To", reply_to))
        headers += [
            ("Subject", message.subject or ""),
            ("Date", formatdate(usegmt=True)),
            ("Message-ID", message_id),
            ("X-Herald-Delivery-Id", message.delivery_id),
        ]
        for name, value in message.headers.items():
            if name.lower() in _BUILT_HEADERS:
                raise ValueError(f"header {name} is set from the message's own fields")
            headers.append((name, value))
        return mime.compose(headers, message.body, message.text, utf8), message_id

    # Sending

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        sender = self._envelope_sender(message)
        try:
            recipient = _address(message.to_address)
        except ValueError as exc:  # would not fit on an SMTP command line
            raise ProviderRejected("invalid_address", str(exc)) from exc
        utf8 = not (sender.isascii() and recipient.isascii())
        try:
            email, message_id = self.build(message, utf8)
        except ValueError as exc:  # a header value with a line break
            raise ProviderRejected("invalid_message", str(exc)) from exc
        self._follow_running_loop()
        async with self._slots:
            connection = await self._checkout()
            try:
                await _transact(connection.smtp, sender, recipient, email, utf8)
            except Exception as exc:
                await self._release_after(connection, exc)
                raise self._classify(exc) from exc
            except BaseException:  # cancelled mid-transaction: its state is unknown
                connection.smtp.close()
                raise
            connection.messages += 1
            await self._checkin(connection)
        return SendReceipt(provider_message_id=message_id)

    def _envelope_sender(self, message: OutgoingMessage) -> str:
        """MAIL FROM: the From address, where the relay sends bounces."""
        sender = message.sender or self.config.sender
        try:
            return _address(sender)
        except ValueError as exc:
            if message.sender:  # this message's own sender: its content is at fault
                raise ProviderRejected("invalid_sender", f"{sender!r}: {exc}") from exc
            raise ProviderMisconfigured(f"sender address {sender!r} is not usable: {exc}") from exc

    def _follow_running_loop(self) -> None:
        """Connections and the semaphore belong to the event loop that made them: a caller that
        runs each batch in a new loop (asyncio.run in a worker thread) gets a fresh pool."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        for connection in self._idle:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing left to say
                connection.smtp.close()
        self._idle = []
        self._slots = asyncio.Semaphore(self.config.pool_size)
        self._loop = loop

    async def _checkout(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be stale
            if connection.smtp.is_connected:  # False once the server has closed it
                return connection
            connection.smtp.close()
        try:
            return _Connection(await self._open())
        except Exception as exc:
            raise self._classify(exc) from exc

    async def _checkin(self, connection: _Connection) -> None:
        if connection.messages >= self.config.max_messages_per_connection:
            await _quit(connection.smtp)
        elif connection.smtp.is_connected:
            self._idle.append(connection)

    async def _release_after(self, connection: _Connection, exc: Exception) -> None:
        """After a refusal the client has reset the transaction and the connection is as good as
        before; after anything else (timeout, disconnect, 421) it is discarded."""
        refused = isinstance(
            exc,
            aiosmtplib.SMTPRecipientsRefused
            | aiosmtplib.SMTPRecipientRefused
            | aiosmtplib.SMTPSenderRefused
            | aiosmtplib.SMTPDataError,
        )
        if refused and _codes(exc) and 421 not in _codes(exc) and connection.smtp.is_connected:
            connection.messages += 1  # relays count refused transactions against the cap too
            await self._checkin(connection)
        else:
            connection.smtp.close()

    async def _open(self) -> aiosmtplib.SMTP:
        """A connection ready for MAIL FROM: connected, upgraded to TLS and logged in as
        configured, each step raising what it found wrong."""
        config = self.config
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            local_hostname=self._local_hostname,
            timeout=config.timeout_seconds,
            use_tls=config.tls == "tls",
            start_tls=False,  # done below, so "none" never upgrades and failures are told apart
            validate_certs=config.validate_certs,
            cert_bundle=config.ca_file,
        )
        await smtp.connect()
        try:
            if config.tls == "starttls":
                await smtp.ehlo()
                if not smtp.supports_extension("starttls"):
                    raise ProviderMisconfigured(f"{self._where} does not offer STARTTLS")
                await smtp.starttls()
            if config.username is not None:
                await self._login(smtp)
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def _login(self, smtp: aiosmtplib.SMTP) -> None:
        config = self.config
        assert config.username is not None
        if smtp.is_ehlo_or_helo_needed:  # as after STARTTLS, which forgets the extensions
            await smtp.ehlo()
        if not smtp.supports_extension("auth"):
            raise ProviderMisconfigured(
                f"{self._where} does not offer AUTH on this connection"
                + (" (it may offer it over TLS: set tls)" if config.tls == "none" else "")
            )
        password = config.password.get_secret_value() if config.password else ""
        try:
            await smtp.login(config.username, password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            if exc.code >= 500:
                raise ProviderMisconfigured(
                    f"SMTP server refused the login for {config.username!r} at {self._where}: "
                    f"{exc.code} {exc.message}"
                ) from exc
            raise ProviderUnavailable(f"{self._where} could not log in now: {exc}") from exc
        except aiosmtplib.SMTPException as exc:
            if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError):
                raise
            # No mechanism both sides speak (aiosmtplib: CRAM-MD5, PLAIN, LOGIN).
            raise ProviderMisconfigured(f"{self._where} login impossible: {exc}") from exc

    # Classifying errors

    @property
    def _where(self) -> str:
        return f"SMTP server {self.config.host}:{self.config.port}"

    def _classify(self, exc: Exception) -> ProviderError:
        where = self._where
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused | aiosmtplib.SMTPRecipientRefused):
            refusals = (
                exc.recipients if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) else [exc]
            )
            first = refusals[0]
            detail = f"{first.code} {first.message}"
            if all(r.code >= 500 for r in refusals):
                return ProviderRejected("recipient_refused", detail, provider_code=str(first.code))
            return ProviderUnavailable(f"{where} deferred the recipient: {detail}")
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            detail = f"{exc.code} {exc.message}"
            if exc.code == 552 and _about_size(exc.message):  # RFC 1870: SIZE over the limit
                return ProviderRejected("message_too_large", detail, provider_code="552")
            if exc.code >= 500:  # the relay will not send for this From address: every message
                return ProviderMisconfigured(f"{where} refused the sender {exc.sender!r}: {detail}")
            return ProviderUnavailable(f"{where} deferred the sender: {detail}")
        if isinstance(exc, aiosmtplib.SMTPDataError):
            detail = f"{exc.code} {exc.message}"
            if exc.code < 500:
                return ProviderUnavailable(f"{where} deferred the message: {detail}")
            # Some relays check the mailbox only at the end of DATA (5.1.x); otherwise the
            # refusal is about this message's content or size, not the address.
            about_address = (m := _ENHANCED_CODE.match(exc.message)) and m.group(2) == "1"
            reason = "recipient_refused" if about_address else "message_refused"
            return ProviderRejected(reason, detail, provider_code=str(exc.code))
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            # An internationalised address and a relay without SMTPUTF8.
            return ProviderRejected("invalid_address", f"{where}: {exc}")
        if verify_message := _certificate_error(exc):
            return ProviderMisconfigured(
                f"{where} has a certificate that is not trusted: {verify_message} "
                "(set ca_file to trust its CA)"
            )
        if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
            return ProviderMisconfigured(f"{where}: TLS failed ({exc}); does tls match the port?")
        if isinstance(exc, aiosmtplib.SMTPConnectResponseError) and exc.code >= 500:
            return ProviderMisconfigured(f"{where} refused the connection: {exc}")
        # Connection refused, timeouts, disconnects, 421 and other 4xx, a 5xx to a command that
        # every message sends: the server, not this message, is at fault for now.
        return ProviderUnavailable(f"{where}: {exc}")

    # Checking and closing

    async def check(self) -> None:
        """Connects, says EHLO, upgrades and logs in as configured, then NOOP and QUIT."""
        self._follow_running_loop()
        try:
            smtp = await self._open()
            try:
                if smtp.is_ehlo_or_helo_needed:
                    await smtp.ehlo()
                await smtp.noop()
            except BaseException:
                smtp.close()
                raise
            await _quit(smtp)
        except Exception as exc:
            raise self._classify(exc) from exc

    async def aclose(self) -> None:
        self._follow_running_loop()  # connections of a loop that has gone are dropped
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(c.smtp) for c in idle))


def _about_size(message: str) -> bool:
    """A 552 says the message is too large (5.3.4, or in words); other 552s at MAIL mean the
    account's storage is full, which is about the channel, not this message."""
    enhanced = _ENHANCED_CODE.match(message)
    return bool(enhanced and enhanced.group(2, 3) == ("3", "4")) or "size" in message.lower()


@functools.lru_cache(maxsize=4096)  # senders repeat on every message; parsing is not cheap
def _address(address: str) -> str:
    """The addr-spec an SMTP command carries; ValueError when there is none."""
    return parse_address(address)


async def _transact(
    smtp: aiosmtplib.SMTP, sender: str, recipient: str, message: bytes, utf8: bool
) -> None:
    """One mail transaction: MAIL, RCPT, DATA, as aiosmtplib's sendmail runs it (and raising
    what it raises), for addresses parsed once already: sendmail parses each address twice
    more, a tenth of the CPU a message costs. `message` has CRLF line ends throughout."""
    if smtp.is_ehlo_or_helo_needed:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:  # a relay that speaks only HELO, as sendmail allows
            if not smtp.is_connected:
                raise
            await smtp.helo()
    options: list[bytes] = []
    if smtp.supports_extension("size"):
        options.append(f"SIZE={len(message)}".encode())  # RFC 1870: octets, CRLF included
    if utf8:
        if not smtp.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported(
                "an address is not ASCII and the relay does not offer SMTPUTF8"
            )
        options.append(b"SMTPUTF8")
    encoding = "utf-8" if utf8 else "ascii"
    try:
        reply = await smtp.execute_command(
            b"MAIL", b"FROM:<%s>" % sender.encode(encoding), *options
        )
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await smtp.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode(encoding))
        if reply.code not in (250, 251):
            refused = aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            raise aiosmtplib.SMTPRecipientsRefused([refused])
        await smtp.data(message)  # raises SMTPDataError unless 354, then 250
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await smtp.rset()  # a fresh envelope for the connection's next message
        raise


def _codes(exc: Exception) -> list[int]:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return [r.code for r in exc.recipients]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return [exc.code]
    return []


def _certificate_error(exc: BaseException) -> str | None:
    """What the certificate check said, when the TLS handshake failed on it (aiosmtplib wraps
    the error when connecting with implicit TLS, and raises it as it is on STARTTLS)."""
    for error in (exc, exc.__cause__):
        if isinstance(error, ssl.SSLCertVerificationError):
            return str(error.verify_message or error)
    return None


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """Says QUIT politely; a connection that cannot is closed all the same."""
    try:
        if smtp.is_connected:
            await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()
