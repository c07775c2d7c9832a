"""A real local SMTP server (aiosmtpd) for playing a relay in tests.

It records every message it accepts, parsed, with its envelope, the login and whether the
session was encrypted; it counts the client sessions it served and the most open at once, as a
relay that caps connections would. It can require AUTH, serve STARTTLS or implicit TLS with a
certificate the test makes, refuse chosen senders or recipients with the reply a relay gives,
drop connections as a restarting server does, and hold its answers after a number of messages
(as a slow relay does) so that a test can kill a client while its sends are in flight.
"""

import asyncio
import ipaddress
import socket
import ssl
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Tls = Literal["none", "starttls", "tls"]


@dataclass(frozen=True)
class Certificate:
    cert_file: Path  # PEM; self-signed, so it is also the CA a client trusts
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def self_signed_certificate(directory: Path) -> Certificate:
    """A certificate for 127.0.0.1 and localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Herald test relay")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate = Certificate(directory / "relay.pem", directory / "relay.key")
    certificate.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certificate.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # the message as it came, CRLF line ends and all
    mail_options: list[str]  # MAIL FROM's parameters (SMTPUTF8, BODY=...)
    login: str | None  # the user the session logged in as
    tls: bool  # the session was encrypted when the message came
    session: int  # 1 for the first client session the sink served, and so on

    @property
    def message(self) -> EmailMessage:
        # Parsed when a test reads it: parsing thousands on the server's thread would slow the
        # client it shares the interpreter with.
        message = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(message, EmailMessage)
        return message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SmtpSink:
    tls: Tls = "none"
    certificate: Certificate | None = None  # required for tls "starttls" and "tls"
    login: tuple[str, str] | None = None  # (user, password): AUTH required before MAIL
    # Replies instead of 250, chosen by address: at MAIL FROM, at RCPT TO, and at the end of DATA.
    refuse_senders: dict[str, str] = field(default_factory=dict)
    refuse_recipients: dict[str, str] = field(default_factory=dict)
    refuse_data: dict[str, str] = field(default_factory=dict)
    drop_at_rcpt: set[str] = field(default_factory=set)  # the server hangs up at RCPT TO
    # After this many messages, each further one is queued (counted in `received`, as an MTA
    # that has the whole message keeps it) but its 250 waits until release(): the client cannot
    # tell whether it went. None: every message is answered at once.
    hold_after: int | None = None
    smtputf8: bool = False  # offers SMTPUTF8 (RFC 6531): addresses and headers in UTF-8
    size_limit: int | None = None  # advertises SIZE (RFC 1870) and refuses larger messages
    helo_only: bool = False  # answers EHLO with 502, as an old relay that speaks only HELO
    received: list[Received] = field(default_factory=list)
    rcpt_attempts: list[str] = field(default_factory=list)
    sessions_opened: int = 0
    max_open: int = 0
    noops: int = 0
    quits: int = 0
    failed_logins: int = 0
    port: int = field(default_factory=_free_port)

    def __post_init__(self) -> None:
        self._open: dict[SMTP, int] = {}  # live session -> its number
        self._changed = threading.Condition()
        self._controller: Controller | None = None
        self._released = threading.Event()  # read by the test's thread
        self._answers = asyncio.Event()  # awaited on the server's loop

    @property
    def messages(self) -> list[EmailMessage]:
        return [r.message for r in self.received]

    def per_recipient(self) -> Counter[str]:
        """How many messages each recipient got."""
        with self._changed:
            return Counter(address for r in self.received for address in r.rcpt_tos)

    def message_ids(self) -> dict[str, set[str]]:
        """The Message-IDs each recipient got (headers only: cheap enough for thousands)."""
        parser = BytesHeaderParser(policy=policy.default)
        with self._changed:
            received = list(self.received)
        ids: dict[str, set[str]] = {}
        for r in received:
            message_id = str(parser.parsebytes(r.data)["Message-ID"])
            for address in r.rcpt_tos:
                ids.setdefault(address, set()).add(message_id)
        return ids

    @property
    def open_now(self) -> int:
        with self._changed:
            return len(self._open)

    # Serving

    def start(self) -> None:
        context = self.certificate.server_context() if self.certificate else None
        if self.tls != "none" and context is None:
            raise ValueError("a TLS sink needs a certificate")
        smtp_options: dict[str, Any] = {
            "server_hostname": "relay.herald.test",
            "enable_SMTPUTF8": self.smtputf8,
        }
        if self.size_limit is not None:
            smtp_options["data_size_limit"] = self.size_limit
        if self.tls == "starttls":
            smtp_options |= {"tls_context": context, "require_starttls": True}
        if self.login:
            smtp_options |= {
                "authenticator": self._authenticate,
                "auth_required": True,
                # Over implicit TLS aiosmtpd does not see the encryption; _authenticate checks.
                "auth_require_tls": self.tls == "starttls",
            }
        self._controller = _Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=context if self.tls == "tls" else None,
            **smtp_options,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def drop_connections(self) -> None:
        """Hangs up every open session, as a server restarting or timing idle clients out does;
        returns once the server has closed them."""
        assert self._controller is not None
        with self._changed:
            sessions = list(self._open)
        for server in sessions:
            self._controller.loop.call_soon_threadsafe(_hang_up, server)
        self.wait_closed()

    def holding(self) -> bool:
        """True once a message waits for its answer (see hold_after)."""
        with self._changed:
            return self._holds(len(self.received))

    def release(self) -> None:
        """Answers the held messages (to whoever is still connected) and holds no more."""
        self._released.set()
        if self._controller is not None:
            self._controller.loop.call_soon_threadsafe(self._answers.set)

    def wait_closed(self, timeout: float = 2.0) -> None:
        """Waits until no session is open (after a client's QUIT, for instance)."""
        with self._changed:
            if not self._changed.wait_for(lambda: not self._open, timeout):
                raise TimeoutError(f"{len(self._open)} SMTP sessions still open")

    # What the server does, on its own thread (through _Hooks)

    def _session_started(self, server: SMTP) -> None:
        with self._changed:
            if server not in self._open:
                self.sessions_opened += 1
                self._open[server] = self.sessions_opened
                self.max_open = max(self.max_open, len(self._open))

    def _session_ended(self, server: SMTP) -> None:
        with self._changed:
            self._open.pop(server, None)
            self._changed.notify_all()

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        encrypted = _encrypted(server)
        matches = (
            isinstance(auth_data, LoginPassword)
            and (auth_data.login.decode(), auth_data.password.decode()) == self.login
        )
        if not (matches and (encrypted or self.tls == "none")):
            self.failed_logins += 1
            return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8
        return AuthResult(success=True, auth_data=auth_data)

    def _mail_from(self, server, envelope, address, mail_options) -> str:
        if address in self.refuse_senders:
            return self.refuse_senders[address]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    def _rcpt_to(self, server, envelope, address) -> str:
        self.rcpt_attempts.append(address)
        if address in self.drop_at_rcpt:
            _hang_up(server)
            return "421 4.3.2 going down"  # never reaches the client: the line is cut
        if address in self.refuse_recipients:
            return self.refuse_recipients[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _data(self, server, session, envelope) -> str:
        for address in envelope.rcpt_tos:
            if address in self.refuse_data:
                return self.refuse_data[address]
        with self._changed:
            number = self._open.get(server, 0)
            self.received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=envelope.content,
                    mail_options=list(envelope.mail_options),
                    login=session.auth_data.login.decode() if session.authenticated else None,
                    tls=_encrypted(server),
                    session=number,
                )
            )
        return "250 2.0.0 Ok: queued"

    def _holds(self, number: int) -> bool:
        return (
            self.hold_after is not None and number > self.hold_after and not self._released.is_set()
        )

    async def _answer(self, number: int, reply: str) -> str:
        # A client that dies meanwhile cancels this wait; the message stays received.
        if self._holds(number):
            await self._answers.wait()
        return reply


class _Hooks:
    """aiosmtpd's handler. Not the sink itself: aiosmtpd reads every attribute of its handler on
    each connection, which would evaluate the sink's properties (parsing every message)."""

    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        return self.sink._mail_from(server, envelope, address, mail_options)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        return self.sink._rcpt_to(server, envelope, address)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        reply = self.sink._data(server, session, envelope)
        if not reply.startswith("250"):
            return reply
        # The sink's loop runs one handler at a time between awaits: this is the message's number.
        return await self.sink._answer(len(self.sink.received), reply)


class _SinkSMTP(SMTP):
    """Tells the sink when a client session starts (its first HELO or EHLO: the Controller's own
    readiness probe never sends one) and ends."""

    def __init__(self, sink: SmtpSink, **options: Any):
        with warnings.catch_warnings():  # AUTH over implicit TLS looks like AUTH in clear
            warnings.simplefilter("ignore")
            super().__init__(_Hooks(sink), **options)
        self._sink = sink

    async def smtp_HELO(self, hostname: str) -> None:  # noqa: N802
        self._sink._session_started(self)
        await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802
        if self._sink.helo_only:
            await self.push("502 5.5.1 Command not implemented")
            return
        self._sink._session_started(self)
        await super().smtp_EHLO(hostname)

    async def smtp_NOOP(self, arg: str) -> None:  # noqa: N802
        self._sink.noops += 1
        await super().smtp_NOOP(arg)

    async def smtp_QUIT(self, arg: str) -> None:  # noqa: N802
        self._sink.quits += 1
        await super().smtp_QUIT(arg)

    def connection_lost(self, error: Exception | None) -> None:
        self._sink._session_ended(self)
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, sink: SmtpSink, **options: Any):
        self._sink = sink
        super().__init__(_Hooks(sink), **options)

    def factory(self) -> SMTP:
        return _SinkSMTP(self._sink, **self.SMTP_kwargs)


def _encrypted(server: SMTP) -> bool:
    return (
        server.transport is not None and server.transport.get_extra_info("sslcontext") is not None
    )


def _hang_up(server: SMTP) -> None:
    transport = server._original_transport or server.transport  # below TLS, if any
    if transport is not None:
        transport.abort()


@contextmanager
def smtp_sink(**options: Any) -> Iterator[SmtpSink]:
    sink = SmtpSink(**options)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
