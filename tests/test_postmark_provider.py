"""The Postmark provider against a fake Postmark API on a real local server
(tests/fakes/postmark.py), which checks the token, the JSON headers, the batch size and every
message's fields, and answers with Postmark's result shapes."""

import socket
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from herald.delivery.html_text import html_to_text
from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
)
from herald.delivery.providers.postmark import (
    DELIVERY_ID_HEADER,
    DELIVERY_ID_METADATA,
    PostmarkConfig,
    PostmarkProvider,
)
from models.enums import Channel
from tests.fakes.http_server import FakeServer, Reply, fake_server
from tests.fakes.postmark import FakePostmark

TOKEN = "pm-server-token-0001"
HTML = (
    '<html><body><h1>Hi Ada</h1><p>Your order shipped. <a href="https://shop.test/o/42">Track'
    "</a></p></body></html>"
)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[FakeServer, FakePostmark]]:
    """One fake Postmark for the module (a server takes half a second to stop), reset per test."""
    postmark = FakePostmark(TOKEN)
    with fake_server(postmark) as server:
        yield server, postmark


@pytest.fixture
def postmark(shared: tuple[FakeServer, FakePostmark]) -> FakePostmark:
    server, postmark = shared
    postmark.reset()
    server.requests.clear()
    return postmark


@pytest.fixture
def server(shared: tuple[FakeServer, FakePostmark], postmark: FakePostmark) -> FakeServer:
    return shared[0]


def provider_for(url: str, **config) -> PostmarkProvider:
    values = {
        "server_token": TOKEN,
        "base_url": url,
        "from_email": "news@shop.test",
        "from_name": "Sneaker Shop",
        "timeout_seconds": 5.0,
    }
    return PostmarkProvider(PostmarkConfig(**(values | config)))


def email(n: int = 0, **overrides) -> OutgoingMessage:
    values = {
        "delivery_id": f"d-{n}",
        "idempotency_key": f"campaign/c1/path/p1:step-1:profile-{n}",
        "profile_id": f"profile-{n}",
        "channel": Channel.email,
        "to_address": f"person{n}@example.com",
        "subject": f"Hello {n}",
        "body": HTML,
        "headers": {
            "List-Unsubscribe": f"<https://herald.test/u/{n}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    return OutgoingMessage(**(values | overrides))


def headers_of(sent: dict) -> dict[str, str]:
    return {h["Name"]: h["Value"] for h in sent["Headers"]}


async def test_1200_messages_go_out_in_three_batch_calls(server, postmark):
    provider = provider_for(server.url)
    try:
        outcomes = await provider.send_many([email(n) for n in range(1200)])
    finally:
        await provider.aclose()

    assert [r.path for r in server.requests] == ["/email/batch"] * 3
    assert sorted(postmark.batch_sizes) == [200, 500, 500]
    assert all(isinstance(o, SendReceipt) for o in outcomes)
    # In order: each receipt is the MessageID Postmark gave that very recipient.
    assert [o.provider_message_id for o in outcomes] == [
        postmark.message_ids[f"person{n}@example.com"] for n in range(1200)
    ]
    assert len(set(postmark.message_ids.values())) == 1200


async def test_batches_overlap_up_to_the_concurrency_and_no_further(server, postmark):
    postmark.delay_seconds = 0.2
    provider = provider_for(server.url, batch_size=100, concurrency=2)
    try:
        outcomes = await provider.send_many([email(n) for n in range(500)])
    finally:
        await provider.aclose()
    assert postmark.batch_sizes == [100] * 5
    assert postmark.max_in_flight == 2
    assert all(isinstance(o, SendReceipt) for o in outcomes)


async def test_each_message_carries_both_bodies_headers_and_metadata(server, postmark):
    provider = provider_for(server.url)
    try:
        await provider.send(email(7, reply_to="help@shop.test"))
    finally:
        await provider.aclose()

    [request] = server.requests
    assert request.headers["x-postmark-server-token"] == TOKEN
    [sent] = request.json()
    assert sent["From"] == "Sneaker Shop <news@shop.test>"
    assert sent["To"] == "person7@example.com"
    assert sent["Subject"] == "Hello 7"
    assert sent["ReplyTo"] == "help@shop.test"
    assert sent["HtmlBody"] == HTML
    assert (
        sent["TextBody"]
        == html_to_text(HTML)
        == ("Hi Ada\n\nYour order shipped. Track (https://shop.test/o/42)")
    )
    assert sent["MessageStream"] == "outbound"
    assert (sent["TrackOpens"], sent["TrackLinks"]) == (False, "None")
    assert sent["Metadata"] == {DELIVERY_ID_METADATA: "d-7"}
    headers = headers_of(sent)
    assert headers[DELIVERY_ID_HEADER] == "d-7"
    assert headers["List-Unsubscribe"] == "<https://herald.test/u/7>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["Message-ID"].startswith("<") and headers["Message-ID"].endswith("@shop.test>")
    assert postmark.accepted == [sent]


async def test_the_message_id_header_is_the_same_on_every_attempt(server, postmark):
    provider = provider_for(server.url)
    try:
        await provider.send(email(1))
        await provider.send(email(1))
        await provider.send(email(2))
    finally:
        await provider.aclose()
    first, retry, other = (headers_of(r.json()[0])["Message-ID"] for r in server.requests)
    assert first == retry != other


async def test_the_templates_own_text_part_and_sender_win(server, postmark):
    provider = provider_for(server.url, message_stream="broadcast")
    try:
        await provider.send(
            email(1, text="Plain words.", sender="drops@shop.test", sender_name="Drops Team")
        )
    finally:
        await provider.aclose()
    [sent] = server.requests[0].json()
    assert sent["TextBody"] == "Plain words."
    assert sent["From"] == "Drops Team <drops@shop.test>"
    assert sent["MessageStream"] == "broadcast"


async def test_a_plain_text_email_has_no_html_part(server, postmark):
    provider = provider_for(server.url)
    try:
        await provider.send(email(1, body="Just text, no markup."))
    finally:
        await provider.aclose()
    [sent] = server.requests[0].json()
    assert sent["TextBody"] == "Just text, no markup."
    assert "HtmlBody" not in sent


async def test_an_inactive_recipient_fails_only_its_own_message(server, postmark):
    postmark.inactive.add("person3@example.com")
    provider = provider_for(server.url)
    try:
        outcomes = await provider.send_many([email(n) for n in range(6)])
    finally:
        await provider.aclose()
    refused = outcomes[3]
    assert isinstance(refused, ProviderRejected)
    assert (refused.reason, refused.provider_code) == ("recipient_suppressed", "406")
    assert [isinstance(o, SendReceipt) for o in outcomes] == [True, True, True, False, True, True]
    assert len(server.requests) == 1


async def test_an_invalid_message_is_rejected_with_postmarks_code(server, postmark):
    provider = provider_for(server.url)
    try:
        outcomes = await provider.send_many([email(0), email(1, to_address="")])
        with pytest.raises(ProviderRejected) as caught:
            await provider.send(email(2, to_address=" "))
    finally:
        await provider.aclose()
    assert isinstance(outcomes[0], SendReceipt)
    assert isinstance(outcomes[1], ProviderRejected)
    assert (outcomes[1].reason, outcomes[1].provider_code) == ("provider_rejected", "300")
    assert "To is required" in outcomes[1].detail
    assert caught.value.provider_code == "300"


async def test_a_wrong_token_means_the_channel_is_misconfigured(server, postmark):
    provider = provider_for(server.url, server_token="not-the-token")
    try:
        outcomes = await provider.send_many([email(0), email(1)])
        with pytest.raises(ProviderMisconfigured, match="server_token"):
            await provider.send(email(2))
        with pytest.raises(ProviderMisconfigured, match="server_token"):
            await provider.check()
    finally:
        await provider.aclose()
    assert all(isinstance(o, ProviderMisconfigured) for o in outcomes)
    assert postmark.accepted == []


async def test_503_makes_the_whole_batch_unavailable(server, postmark):
    postmark.fail_with = Reply(503, b"Service Unavailable")
    provider = provider_for(server.url)
    try:
        outcomes = await provider.send_many([email(0), email(1)])
        with pytest.raises(ProviderUnavailable, match="HTTP 503"):
            await provider.check()
    finally:
        await provider.aclose()
    assert all(isinstance(o, ProviderUnavailable) for o in outcomes)


async def test_429_honours_retry_after(server, postmark):
    postmark.fail_with = Reply(
        429, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, {"Retry-After": "30"}
    )
    provider = provider_for(server.url)
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.send(email(0))
    finally:
        await provider.aclose()
    assert caught.value.retry_after == 30.0


async def test_a_422_for_the_whole_request_applies_its_error_code_to_every_message(
    server, postmark
):
    provider = provider_for(server.url)
    try:
        postmark.fail_with = Reply(422, {"ErrorCode": 412, "Message": "Account is pending."})
        pending = await provider.send_many([email(0), email(1)])
        postmark.fail_with = Reply(422, {"ErrorCode": 411, "Message": "Forbidden attachment."})
        forbidden = await provider.send_many([email(0)])
    finally:
        await provider.aclose()
    assert all(isinstance(o, ProviderMisconfigured) for o in pending)
    assert "412" in pending[0].detail
    [rejected] = forbidden
    assert isinstance(rejected, ProviderRejected)
    assert (rejected.reason, rejected.provider_code) == ("provider_rejected", "411")


async def test_a_batch_that_times_out_is_unavailable():
    postmark = FakePostmark(TOKEN)
    postmark.delay_seconds = 1.0
    with fake_server(postmark) as server:
        provider = provider_for(server.url, timeout_seconds=0.2)
        try:
            started = time.monotonic()
            outcomes = await provider.send_many([email(0), email(1)])
            assert time.monotonic() - started < 0.9
        finally:
            await provider.aclose()
    assert all(isinstance(o, ProviderUnavailable) for o in outcomes)
    assert "Timeout" in outcomes[0].detail


async def test_an_unreachable_api_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = provider_for(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(ProviderUnavailable, match="ConnectError"):
            await provider.send(email(0))
        with pytest.raises(ProviderUnavailable, match="ConnectError"):
            await provider.check()
    finally:
        await provider.aclose()


async def test_a_message_over_postmarks_size_limit_is_refused_without_a_call(server, postmark):
    provider = provider_for(server.url)
    huge = "<p>" + "x" * 10_000_000 + "</p>"
    try:
        outcomes = await provider.send_many([email(0, body=huge, text="x"), email(1)])
    finally:
        await provider.aclose()
    assert isinstance(outcomes[0], ProviderRejected)
    assert outcomes[0].reason == "message_too_large"
    assert isinstance(outcomes[1], SendReceipt)
    assert postmark.batch_sizes == [1]


async def test_check_asks_for_the_server_with_the_token(server, postmark):
    provider = provider_for(server.url)
    try:
        await provider.check()
    finally:
        await provider.aclose()
    [request] = server.requests
    assert (request.method, request.path) == ("GET", "/server")
    assert request.headers["x-postmark-server-token"] == TOKEN


async def test_nothing_to_send_makes_no_call(server, postmark):
    provider = provider_for(server.url)
    try:
        assert await provider.send_many([]) == []
    finally:
        await provider.aclose()
    assert server.requests == []


def test_config_holds_postmarks_limits():
    with pytest.raises(ValidationError, match="less than or equal to 500"):
        PostmarkConfig(server_token=TOKEN, from_email="a@b.test", batch_size=501)
    with pytest.raises(ValidationError, match="extra"):
        PostmarkConfig(server_token=TOKEN, from_email="a@b.test", track_opens=True)
    config = PostmarkConfig(server_token=TOKEN, from_email="a@b.test", concurrency=3)
    provider = PostmarkProvider(config)
    assert (provider.limits.concurrency, provider.limits.per_second) == (3, None)
    assert config.message_stream == "outbound"
    assert TOKEN not in repr(config)
