"""Email over SMTP against a real local relay (aiosmtpd): what a message looks like on arrival,
how the connection pool behaves at volume and when the server hangs up, TLS and AUTH, and how
every refusal is classified."""

import asyncio
import gc
import hashlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
)
from herald.delivery.providers.smtp import SmtpConfig, SmtpProvider
from models.enums import Channel
from tests.fakes.smtp_sink import Certificate, SmtpSink, self_signed_certificate, smtp_sink

HTML = (
    "<html><head><style>p { color: red }</style></head><body>"
    "<h1>Spring sale</h1><p>Hello Ada,<br>everything is 20% off &amp; more.</p>"
    '<p><a href="https://shop.test/sale">Shop the sale</a></p></body></html>'
)
LOGIN = ("herald", "s3cret")


def email(n: int = 0, **fields: Any) -> OutgoingMessage:
    defaults: dict[str, Any] = {
        "delivery_id": f"dlv-{n}",
        "idempotency_key": f"campaign/7/step/1/profile/{n}",
        "profile_id": f"profile-{n}",
        "channel": Channel.email,
        "to_address": f"ada{n}@example.com",
        "subject": "Spring sale",
        "body": HTML,
    }
    return OutgoingMessage(**(defaults | fields))


def config_for(sink: SmtpSink, **fields: Any) -> SmtpConfig:
    defaults: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": sink.port,
        "tls": "none",
        "sender": "shop@herald.test",
        "sender_name": "Herald Shop",
        "timeout_seconds": 5,
        "local_hostname": "worker.herald.test",
    }
    return SmtpConfig(**(defaults | fields))


@asynccontextmanager
async def provider_for(config: SmtpConfig) -> AsyncIterator[SmtpProvider]:
    provider = SmtpProvider(config)
    try:
        yield provider
    finally:
        await provider.aclose()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed_certificate(tmp_path_factory.mktemp("relay-cert"))


def content(part: EmailMessage) -> str:
    """A part's text as written, without the CRLF line ends SMTP carried it with."""
    return part.get_content().replace("\r\n", "\n").strip()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# What arrives


async def test_message_arrives_with_sender_name_reply_to_delivery_id_and_extra_headers(sink):
    message = email(
        subject="Frühlings-Sale ☀",
        reply_to="help@herald.test",
        headers={
            "List-Unsubscribe": "<https://herald.test/u/abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Id": "Spring news <spring.herald.test>",
        },
    )
    async with provider_for(config_for(sink, sender_name="Herald Shöp")) as provider:
        receipt = await provider.send(message)
    [received] = sink.received
    assert (received.mail_from, received.rcpt_tos) == ("shop@herald.test", ["ada0@example.com"])
    arrived = received.message
    [sender] = arrived["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Herald Shöp", "shop@herald.test")
    assert arrived["To"] == "ada0@example.com"
    assert arrived["Reply-To"] == "help@herald.test"
    assert arrived["Subject"] == "Frühlings-Sale ☀"
    assert parsedate_to_datetime(arrived["Date"]).utcoffset() is not None
    assert arrived["X-Herald-Delivery-Id"] == "dlv-0"
    assert arrived["List-Unsubscribe"] == "<https://herald.test/u/abc>"
    assert arrived["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert arrived["List-Id"] == "Spring news <spring.herald.test>"
    assert receipt == SendReceipt(provider_message_id=arrived["Message-ID"])


async def test_message_sender_replaces_the_configured_one_and_names_the_message_id_domain(sink):
    message = email(sender="news@brand.test", sender_name="Brand News")
    async with provider_for(config_for(sink, reply_to="help@herald.test")) as provider:
        await provider.send(message)
    [received] = sink.received
    assert received.mail_from == "news@brand.test"
    [sender] = received.message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Brand News", "news@brand.test")
    assert received.message["Reply-To"] == "help@herald.test"  # the config's, none on the message
    assert received.message["Message-ID"].endswith("@brand.test>")


def test_message_id_is_the_same_on_every_attempt_at_one_key_and_differs_across_keys():
    provider = SmtpProvider(SmtpConfig(host="relay.test", sender="shop@herald.test"))
    first, retry, other = (
        message_from_bytes(provider.build(m)[0], policy=default)
        for m in (
            email(1, delivery_id="dlv-a"),
            email(1, delivery_id="dlv-b"),  # a new delivery row, the same key
            email(2),
        )
    )
    digest = hashlib.sha256(b"campaign/7/step/1/profile/1").hexdigest()[:32]
    assert first["Message-ID"] == retry["Message-ID"] == f"<{digest}@herald.test>"
    assert first["X-Herald-Delivery-Id"] != retry["X-Herald-Delivery-Id"]
    assert other["Message-ID"] != first["Message-ID"]


async def test_html_body_arrives_with_a_derived_text_part_and_the_html_part(sink):
    async with provider_for(config_for(sink)) as provider:
        await provider.send(email())
    arrived = sink.messages[0]
    assert arrived.get_content_type() == "multipart/alternative"
    text, html = arrived.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert content(text) == (
        "Spring sale\n\nHello Ada,\neverything is 20% off & more.\n\n"
        "Shop the sale (https://shop.test/sale)"
    )
    assert html.get_content_type() == "text/html"
    assert content(html) == HTML


async def test_message_text_is_the_text_part_when_given(sink):
    async with provider_for(config_for(sink)) as provider:
        await provider.send(email(text="Hello Ada, 20% off: https://shop.test/sale"))
    text, html = sink.messages[0].iter_parts()
    assert content(text) == "Hello Ada, 20% off: https://shop.test/sale"
    assert content(html) == HTML


async def test_plain_text_body_arrives_as_a_single_text_part(sink):
    async with provider_for(config_for(sink)) as provider:
        await provider.send(email(body="Hello Ada,\n20% off today."))
    arrived = sink.messages[0]
    assert arrived.get_content_type() == "text/plain"
    assert not arrived.is_multipart()
    assert content(arrived) == "Hello Ada,\n20% off today."


@pytest.mark.parametrize(
    ("headers", "to_address", "reason"),
    [
        ({"Message-ID": "<mine@herald.test>"}, "ada@example.com", "invalid_message"),
        ({"List-Id": "news\r\nBcc: everyone@example.com"}, "ada@example.com", "invalid_message"),
        ({}, "ada lovelace@example.com", "invalid_address"),
    ],
)
async def test_a_message_that_cannot_be_sent_as_it_is_is_rejected_before_connecting(
    sink, headers, to_address, reason
):
    async with provider_for(config_for(sink)) as provider:
        with pytest.raises(ProviderRejected) as refused:
            await provider.send(email(headers=headers, to_address=to_address))
    assert refused.value.reason == reason
    assert sink.sessions_opened == 0


async def test_an_address_that_is_not_ascii_goes_with_smtputf8_where_the_relay_offers_it():
    message = email(to_address="jürgen@bücher.example", subject="Grüße")
    with smtp_sink(smtputf8=True) as sink:
        async with provider_for(config_for(sink)) as provider:
            await provider.send(message)
    [received] = sink.received
    assert received.rcpt_tos == ["jürgen@bücher.example"]
    assert "SMTPUTF8" in received.mail_options
    assert received.message["To"] == "jürgen@bücher.example"
    assert received.message["Subject"] == "Grüße"


async def test_an_address_that_is_not_ascii_is_refused_by_a_relay_without_smtputf8(sink):
    async with provider_for(config_for(sink)) as provider:
        with pytest.raises(ProviderRejected) as refused:
            await provider.send(email(to_address="jürgen@bücher.example"))
    assert refused.value.reason == "invalid_address"
    assert sink.received == []


# The pool


async def test_two_thousand_messages_go_over_at_most_four_connections(sink):
    # Short plain-text messages: this is about the connections; the MIME tests are above.
    messages = [email(n, body="Hello, 20% off today.") for n in range(2000)]
    started = time.monotonic()
    async with provider_for(config_for(sink, pool_size=4)) as provider:
        assert provider.limits.concurrency == 4
        outcomes = await provider.send_many(messages)
    elapsed = time.monotonic() - started
    assert all(isinstance(o, SendReceipt) for o in outcomes)
    assert sorted(r.rcpt_tos[0] for r in sink.received) == sorted(m.to_address for m in messages)
    assert sink.max_open == 4  # counted by the server
    # 100 messages per connection (the default), then QUIT and a fresh one; only the
    # connections still open at the end carried fewer.
    per_session = Counter(r.session for r in sink.received)
    assert len(per_session) == sink.sessions_opened >= 20
    assert max(per_session.values()) == 100
    assert sum(count < 100 for count in per_session.values()) <= 4
    assert sink.quits == sink.sessions_opened
    assert elapsed < 30, f"2,000 messages took {elapsed:.1f}s"


async def test_concurrent_sends_beyond_the_pool_wait_for_a_connection(sink):
    async with provider_for(config_for(sink, pool_size=2)) as provider:
        outcomes = await asyncio.gather(*(provider.send(email(n)) for n in range(50)))
    assert len(outcomes) == len(sink.received) == 50
    assert (sink.sessions_opened, sink.max_open) == (2, 2)


async def test_a_connection_is_replaced_after_max_messages_per_connection(sink):
    config = config_for(sink, pool_size=1, max_messages_per_connection=3)
    async with provider_for(config) as provider:
        for n in range(7):
            await provider.send(email(n))
        assert sink.quits == 2  # the third connection is still open, idle
    assert [r.session for r in sink.received] == [1, 1, 1, 2, 2, 2, 3]
    assert sink.quits == 3  # aclose said QUIT to it


async def test_connections_the_server_closed_while_idle_are_replaced_without_losing_a_message(
    sink,
):
    async with provider_for(config_for(sink, pool_size=2)) as provider:
        before = await provider.send_many([email(n) for n in range(4)])
        assert sink.sessions_opened == 2
        sink.drop_connections()  # a restart, or the server's idle timeout
        await asyncio.sleep(0.05)  # the client reads the hang-up
        after = await provider.send_many([email(n) for n in range(4, 8)])
    assert all(isinstance(o, SendReceipt) for o in before + after)
    assert len(sink.received) == 8
    assert sink.sessions_opened == 4


async def test_a_server_hanging_up_mid_message_fails_that_message_for_retry_and_the_next_goes(
    sink,
):
    sink.drop_at_rcpt.add("crash@example.com")
    async with provider_for(config_for(sink, pool_size=1)) as provider:
        await provider.send(email(1))
        with pytest.raises(ProviderUnavailable):
            await provider.send(email(2, to_address="crash@example.com"))
        await provider.send(email(3))
    assert [r.rcpt_tos for r in sink.received] == [["ada1@example.com"], ["ada3@example.com"]]
    assert [r.session for r in sink.received] == [1, 2]  # a fresh connection after the hang-up


# The connection left on the closed loop cannot be closed through it; the garbage collector
# closes its socket and says so.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_pool_left_on_a_closed_event_loop_is_replaced_on_the_next_one(sink):
    async with provider_for(config_for(sink, pool_size=1)) as provider:
        # A caller that sends each batch with asyncio.run in a worker thread.
        await asyncio.to_thread(asyncio.run, provider.send(email(1)))
        await provider.send(email(2))
        await provider.send(email(3))
    gc.collect()
    assert [r.session for r in sink.received] == [1, 2, 2]


async def test_a_refused_recipient_counts_against_max_messages_per_connection(sink):
    sink.refuse_recipients["gone@example.com"] = "550 5.1.1 no such user"
    config = config_for(sink, pool_size=1, max_messages_per_connection=2)
    async with provider_for(config) as provider:
        await provider.send_many([email(1), email(2, to_address="gone@example.com"), email(3)])
    assert [r.session for r in sink.received] == [1, 2]
    assert sink.quits == 2


async def test_aclose_says_quit_on_every_idle_connection(sink):
    provider = SmtpProvider(config_for(sink, pool_size=3))
    await provider.send_many([email(n) for n in range(6)])
    assert (sink.open_now, sink.quits) == (3, 0)
    await provider.aclose()
    sink.wait_closed()
    assert sink.quits == 3


# Refusals


async def test_recipient_refused_with_550_fails_only_that_message_and_keeps_the_connection(sink):
    sink.refuse_recipients["gone@example.com"] = "550 5.1.1 <gone@example.com>: no such user"
    async with provider_for(config_for(sink, pool_size=1)) as provider:
        outcomes = await provider.send_many(
            [email(1), email(2, to_address="gone@example.com"), email(3)]
        )
    first, refused, third = outcomes
    assert isinstance(first, SendReceipt) and isinstance(third, SendReceipt)
    assert isinstance(refused, ProviderRejected)
    assert (refused.reason, refused.provider_code) == ("recipient_refused", "550")
    assert "no such user" in refused.detail
    assert [r.rcpt_tos for r in sink.received] == [["ada1@example.com"], ["ada3@example.com"]]
    assert sink.sessions_opened == 1  # the refusal did not cost the connection


async def test_recipient_deferred_with_451_is_unavailable_for_retry(sink):
    sink.refuse_recipients["busy@example.com"] = "451 4.3.0 mailbox busy, try later"
    async with provider_for(config_for(sink)) as provider:
        with pytest.raises(ProviderUnavailable) as deferred:
            await provider.send(email(to_address="busy@example.com"))
    assert "451" in deferred.value.detail
    assert sink.received == []


@pytest.mark.parametrize(
    ("reply", "outcome", "reason"),
    [
        ("554 5.7.1 message looks like spam", ProviderRejected, "message_refused"),
        ("550 5.1.1 mailbox unknown", ProviderRejected, "recipient_refused"),
        ("452 4.3.1 insufficient storage", ProviderUnavailable, None),
    ],
)
async def test_a_refusal_at_the_end_of_data_is_classified_by_its_code(sink, reply, outcome, reason):
    sink.refuse_data["ada0@example.com"] = reply
    async with provider_for(config_for(sink)) as provider:
        with pytest.raises(outcome) as refused:
            await provider.send(email())
    assert getattr(refused.value, "reason", None) == reason
    assert sink.received == []


async def test_sender_refused_with_a_5xx_is_a_misconfigured_channel(sink):
    sink.refuse_senders["shop@herald.test"] = "553 5.7.1 sender not allowed for this account"
    async with provider_for(config_for(sink)) as provider:
        with pytest.raises(ProviderMisconfigured) as refused:
            await provider.send(email())
    assert "shop@herald.test" in refused.value.detail and "553" in refused.value.detail


async def test_a_message_over_the_relays_declared_size_is_rejected_as_too_large():
    with smtp_sink(size_limit=4000) as sink:
        async with provider_for(config_for(sink)) as provider:
            await provider.send(email(1))  # about 1 KB: goes, with its size declared
            with pytest.raises(ProviderRejected) as refused:
                await provider.send(email(2, body="<p>" + "sale " * 2000 + "</p>"))
    [received] = sink.received
    assert received.rcpt_tos == ["ada1@example.com"]
    assert any(option.upper().startswith("SIZE=") for option in received.mail_options)
    assert (refused.value.reason, refused.value.provider_code) == ("message_too_large", "552")


async def test_a_552_at_mail_that_is_not_about_size_is_the_channels_problem(sink):
    sink.refuse_senders["shop@herald.test"] = "552 5.2.3 account storage allocation exceeded"
    async with provider_for(config_for(sink)) as provider:
        with pytest.raises(ProviderMisconfigured):
            await provider.send(email())


async def test_a_relay_that_speaks_only_helo_gets_its_mail():
    with smtp_sink(helo_only=True) as sink:
        async with provider_for(config_for(sink)) as provider:
            await provider.send(email())
    [received] = sink.received
    assert received.rcpt_tos == ["ada0@example.com"]


async def test_connection_refused_is_unavailable():
    config = SmtpConfig(host="127.0.0.1", port=unused_port(), tls="none", sender="s@herald.test")
    async with provider_for(config) as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.send(email())
        with pytest.raises(ProviderUnavailable):
            await provider.check()


async def test_a_server_that_never_greets_times_out_as_unavailable():
    with socket.socket() as silent:  # accepts connections (the backlog) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        config = SmtpConfig(
            host="127.0.0.1", port=port, tls="none", sender="s@herald.test", timeout_seconds=0.2
        )
        async with provider_for(config) as provider:
            with pytest.raises(ProviderUnavailable):
                await provider.send(email())


# TLS and AUTH


async def test_starttls_and_auth_against_a_trusted_certificate(certificate):
    with smtp_sink(tls="starttls", certificate=certificate, login=LOGIN) as sink:
        config = config_for(
            sink,
            tls="starttls",
            username=LOGIN[0],
            password=LOGIN[1],
            ca_file=str(certificate.cert_file),  # validate_certs stays True: name and chain
            pool_size=1,
        )
        async with provider_for(config) as provider:
            await provider.send_many([email(1), email(2)])
    assert [(r.tls, r.login, r.session) for r in sink.received] == [
        (True, "herald", 1),
        (True, "herald", 1),
    ]


async def test_implicit_tls_and_auth_without_certificate_validation(certificate):
    with smtp_sink(tls="tls", certificate=certificate, login=LOGIN) as sink:
        config = config_for(
            sink, tls="tls", username=LOGIN[0], password=LOGIN[1], validate_certs=False
        )
        async with provider_for(config) as provider:
            await provider.send(email())
    assert [(r.tls, r.login) for r in sink.received] == [(True, "herald")]


@pytest.mark.parametrize("tls", ["starttls", "tls"])
async def test_an_untrusted_certificate_is_a_misconfigured_channel(certificate, tls):
    with smtp_sink(tls=tls, certificate=certificate) as sink:
        async with provider_for(config_for(sink, tls=tls)) as provider:
            with pytest.raises(ProviderMisconfigured) as untrusted:
                await provider.send(email())
    assert "certificate" in untrusted.value.detail
    assert sink.received == []


async def test_wrong_password_is_a_misconfigured_channel(certificate):
    with smtp_sink(tls="starttls", certificate=certificate, login=LOGIN) as sink:
        config = config_for(
            sink, tls="starttls", username="herald", password="wrong", validate_certs=False
        )
        async with provider_for(config) as provider:
            with pytest.raises(ProviderMisconfigured) as refused:
                await provider.send(email())
    assert "SMTP server refused the login" in refused.value.detail
    assert "535" in refused.value.detail
    assert sink.failed_logins > 0 and sink.received == []


async def test_auth_configured_on_a_plain_connection_the_server_only_offers_over_tls(certificate):
    with smtp_sink(tls="starttls", certificate=certificate, login=LOGIN) as sink:
        config = config_for(sink, tls="none", username=LOGIN[0], password=LOGIN[1])
        async with provider_for(config) as provider:
            with pytest.raises(ProviderMisconfigured) as refused:
                await provider.send(email())
    assert "does not offer AUTH" in refused.value.detail


async def test_starttls_configured_against_a_server_without_it_is_misconfigured(sink):
    async with provider_for(config_for(sink, tls="starttls")) as provider:
        with pytest.raises(ProviderMisconfigured) as refused:
            await provider.send(email())
    assert "STARTTLS" in refused.value.detail


# check()


async def test_check_logs_in_says_noop_and_quits(certificate):
    with smtp_sink(tls="starttls", certificate=certificate, login=LOGIN) as sink:
        config = config_for(
            sink, tls="starttls", username=LOGIN[0], password=LOGIN[1], validate_certs=False
        )
        await SmtpProvider(config).check()
        sink.wait_closed()
    assert (sink.sessions_opened, sink.noops, sink.quits) == (1, 1, 1)
    assert sink.failed_logins == 0 and sink.received == []


async def test_check_with_a_wrong_password_names_the_login(certificate):
    with smtp_sink(tls="starttls", certificate=certificate, login=LOGIN) as sink:
        config = config_for(
            sink, tls="starttls", username="herald", password="wrong", validate_certs=False
        )
        with pytest.raises(ProviderMisconfigured) as refused:
            await SmtpProvider(config).check()
    assert "'herald'" in refused.value.detail and sink.noops == 0


def test_config_keeps_the_password_secret_and_forbids_unknown_fields():
    config = SmtpConfig(host="relay.test", sender="s@herald.test", password="s3cret")
    assert "s3cret" not in repr(config)
    with pytest.raises(ValueError):
        SmtpConfig(host="relay.test", sender="s@herald.test", hostname="typo")  # type: ignore[call-arg]
