"""The webhook channel provider against a real local receiver that verifies every request with
the Standard Webhooks reference library (`standardwebhooks`), as a customer's receiver would.

Loopback is allow-listed explicitly, as an operator would for an in-cluster receiver; one test
shows the same URL refused without the allow list.
"""

import base64
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from herald.core.config import Settings
from herald.delivery import url_safety
from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
)
from herald.delivery.providers.webhook import (
    CHECK_EVENT,
    MESSAGE_EVENT,
    WebhookProvider,
    WebhookProviderConfig,
    sign,
    signing_key,
    webhook_id_for,
)
from models.enums import Channel
from tests.fakes.http_server import FakeServer, Reply, Request, fake_server

SECRET = "whsec_" + base64.b64encode(b"herald-test-signing-key-0123456789").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-receivers-secret-98765").decode()
LOOPBACK = ["127.0.0.1"]


class Receiver:
    """Verifies each request with the reference library; answers 401 when it does not verify,
    else the scripted reply. Verified payloads are kept in order."""

    def __init__(self, secret: str = SECRET):
        self.verifier = Webhook(secret)
        self.reply = Reply(200, {"received": True})
        self.verified: list[dict] = []

    def __call__(self, request: Request) -> Reply:
        try:
            payload = self.verifier.verify(request.body, request.headers)
        except WebhookVerificationError as exc:
            return Reply(401, {"error": f"signature: {exc}"})
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        self.verified.append(payload)
        return self.reply


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[FakeServer, Receiver]]:
    """One receiver for the module (a server takes half a second to stop), reset per test."""
    receiver = Receiver()
    with fake_server(receiver) as server:
        yield server, receiver


@pytest.fixture
def receiver(shared: tuple[FakeServer, Receiver]) -> Receiver:
    server, receiver = shared
    receiver.reply = Reply(200, {"received": True})
    receiver.verified.clear()
    server.requests.clear()
    return receiver


@pytest.fixture
def server(shared: tuple[FakeServer, Receiver], receiver: Receiver) -> FakeServer:
    return shared[0]


def provider_for(url: str, allow_hosts: list[str] = LOOPBACK, **config) -> WebhookProvider:
    values = {"url": url, "secret": SECRET, "timeout_seconds": 2.0} | config
    return WebhookProvider(WebhookProviderConfig(**values), allow_hosts=allow_hosts)


def message(key: str = "flow/f1/p1/e1:email-1", **overrides) -> OutgoingMessage:
    values = {
        "delivery_id": "d-1",
        "idempotency_key": key,
        "profile_id": "p-1",
        "channel": Channel.email,
        "to_address": "ada@example.com",
        "subject": "Your order shipped",
        "body": "<p>Hello Ada</p>",
        "text": "Hello Ada",
        "tracking": {"$delivery_id": "d-1", "run_kind": "flow", "run_id": "f1", "step_id": "s1"},
    }
    return OutgoingMessage(**(values | overrides))


async def test_a_message_arrives_signed_and_verifies_with_the_reference_library(server, receiver):
    provider = provider_for(server.url + "/hooks/herald")
    try:
        receipt = await provider.send(message(test=True))
    finally:
        await provider.aclose()

    [request] = server.requests
    assert request.path == "/hooks/herald"
    assert receiver.verified == [request.json()]
    payload = request.json()
    assert payload["type"] == MESSAGE_EVENT
    assert payload["timestamp"].endswith("Z")
    assert payload["data"] == {
        "delivery_id": "d-1",
        "profile_id": "p-1",
        "channel": "email",
        "to": "ada@example.com",
        "subject": "Your order shipped",
        "body": "<p>Hello Ada</p>",
        "text": "Hello Ada",
        "tracking": {"$delivery_id": "d-1", "run_kind": "flow", "run_id": "f1", "step_id": "s1"},
        "test": True,
    }
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    # The receiver answered no "id": the receipt is the webhook-id, which the receiver saw.
    assert receipt.provider_message_id == request.headers["webhook-id"]
    assert receipt.provider_message_id == webhook_id_for("flow/f1/p1/e1:email-1")


async def test_our_signature_equals_the_reference_librarys_own(server):
    provider = provider_for(server.url)
    try:
        await provider.send(message())
    finally:
        await provider.aclose()
    [request] = server.requests
    headers = request.headers
    when = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = Webhook(SECRET).sign(headers["webhook-id"], when, request.body.decode())
    assert headers["webhook-signature"] == expected


async def test_retries_of_one_message_carry_the_same_webhook_id(server):
    provider = provider_for(server.url)
    try:
        await provider.send(message("run-1:step-1:p-1"))
        await provider.send(message("run-1:step-1:p-1"))
        await provider.send(message("run-1:step-1:p-2"))
    finally:
        await provider.aclose()
    first, retry, other = (r.headers["webhook-id"] for r in server.requests)
    assert first == retry
    assert other != first
    assert first.startswith("msg_") and "." not in first


async def test_a_tampered_body_fails_verification_at_the_receiver(server, receiver):
    provider = provider_for(server.url)
    try:
        await provider.send(message())
    finally:
        await provider.aclose()
    [original] = server.requests
    signed = {k: v for k, v in original.headers.items() if k.startswith("webhook-")}
    tampered = original.body.replace(b"ada@example.com", b"eve@example.com")
    assert tampered != original.body

    async with httpx.AsyncClient() as client:
        replayed = await client.post(
            server.url, content=original.body, headers=signed | {"content-type": "application/json"}
        )
        forged = await client.post(
            server.url, content=tampered, headers=signed | {"content-type": "application/json"}
        )
    assert replayed.status_code == 200  # the untouched request still verifies
    assert forged.status_code == 401
    assert "signature" in forged.json()["error"]
    assert len(receiver.verified) == 2


async def test_a_receiver_with_another_secret_refuses_and_the_channel_is_misconfigured():
    with fake_server(Receiver(OTHER_SECRET)) as server:
        provider = provider_for(server.url)
        try:
            with pytest.raises(ProviderMisconfigured, match="HTTP 401"):
                await provider.send(message())
        finally:
            await provider.aclose()


async def test_the_receivers_own_id_becomes_the_provider_message_id(server, receiver):
    receiver.reply = Reply(202, {"id": "evt_123", "status": "queued"})
    provider = provider_for(server.url)
    try:
        receipt = await provider.send(message())
    finally:
        await provider.aclose()
    assert receipt.provider_message_id == "evt_123"


async def test_a_huge_answer_is_read_only_up_to_the_cap(server, receiver):
    receiver.reply = Reply(200, {"id": "evt_far_away", "padding": "x" * 50_000})
    config = WebhookProviderConfig(url=server.url, secret=SECRET)
    provider = WebhookProvider(config, allow_hosts=LOOPBACK, max_response_bytes=1024)
    try:
        receipt = await provider.send(message())
    finally:
        await provider.aclose()
    # Cut at 1 KiB the answer is no JSON, so its id is never seen.
    assert receipt.provider_message_id == webhook_id_for(message().idempotency_key)


@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_permanent_refusals_reject_the_message(server, receiver, status):
    receiver.reply = Reply(status, {"error": "unknown profile"})
    provider = provider_for(server.url)
    try:
        with pytest.raises(ProviderRejected) as caught:
            await provider.send(message())
    finally:
        await provider.aclose()
    assert caught.value.reason == "provider_rejected"
    assert caught.value.provider_code == str(status)
    assert "unknown profile" in caught.value.detail


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refusals_mean_the_channel_is_misconfigured(server, receiver, status):
    receiver.reply = Reply(status, {"error": "who are you"})
    provider = provider_for(server.url)
    try:
        with pytest.raises(ProviderMisconfigured, match=f"HTTP {status}"):
            await provider.send(message())
    finally:
        await provider.aclose()


async def test_a_redirect_is_not_followed_and_means_the_url_must_change(server, receiver):
    receiver.reply = Reply(301, b"", {"Location": server.url + "/moved"})
    provider = provider_for(server.url + "/old")
    try:
        with pytest.raises(ProviderMisconfigured, match="redirect"):
            await provider.send(message())
    finally:
        await provider.aclose()
    assert [r.path for r in server.requests] == ["/old"]


async def test_429_is_transient_and_honours_retry_after(server, receiver):
    receiver.reply = Reply(429, {"error": "slow down"}, {"Retry-After": "7"})
    provider = provider_for(server.url)
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.send(message())
    finally:
        await provider.aclose()
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(server, receiver, status):
    receiver.reply = Reply(status, b"upstream down")
    provider = provider_for(server.url)
    try:
        with pytest.raises(ProviderUnavailable, match=f"HTTP {status}") as caught:
            await provider.send(message())
    finally:
        await provider.aclose()
    assert caught.value.retry_after is None


async def test_a_receiver_that_does_not_answer_in_time_is_transient():
    def slow(request: Request) -> Reply:
        time.sleep(1.0)
        return Reply(200)

    with fake_server(slow) as server:
        provider = provider_for(server.url, timeout_seconds=0.2)
        try:
            started = time.monotonic()
            with pytest.raises(ProviderUnavailable, match="Timeout"):
                await provider.send(message())
            assert time.monotonic() - started < 0.9
        finally:
            await provider.aclose()


async def test_a_closed_port_is_transient():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = provider_for(f"http://127.0.0.1:{port}/hook")
    try:
        with pytest.raises(ProviderUnavailable, match="ConnectError"):
            await provider.send(message())
    finally:
        await provider.aclose()


async def test_a_loopback_url_is_refused_without_the_allow_list(server):
    provider = provider_for(server.url, allow_hosts=[])
    try:
        with pytest.raises(ProviderMisconfigured, match="loopback"):
            await provider.send(message())
        with pytest.raises(ProviderMisconfigured, match="loopback"):
            await provider.check()
    finally:
        await provider.aclose()
    assert server.requests == []


async def test_from_settings_takes_the_operators_webhook_rules(server):
    config = WebhookProviderConfig(url=server.url, secret=SECRET)
    refused = WebhookProvider.from_settings(config, Settings(webhook_allow_hosts=[]))
    allowed = WebhookProvider.from_settings(config, Settings(webhook_allow_hosts=["127.0.0.0/8"]))
    try:
        with pytest.raises(ProviderMisconfigured, match="loopback"):
            await refused.send(message())
        await allowed.send(message())
    finally:
        await refused.aclose()
        await allowed.aclose()
    assert len(server.requests) == 1


async def test_a_host_that_does_not_resolve_is_transient(monkeypatch):
    def no_answer(host: str, port: int) -> list[str]:
        raise OSError("temporary failure in name resolution")

    monkeypatch.setattr(url_safety, "resolve_host", no_answer)
    provider = provider_for("https://hooks.example.com/herald", allow_hosts=[])
    try:
        with pytest.raises(ProviderUnavailable, match="does not resolve"):
            await provider.send(message())
    finally:
        await provider.aclose()


async def test_extra_headers_are_sent(server):
    provider = provider_for(server.url, headers={"X-Shop": "sneakers"})
    try:
        await provider.send(message())
    finally:
        await provider.aclose()
    assert server.requests[0].headers["x-shop"] == "sneakers"


async def test_check_posts_a_signed_check_event(server, receiver):
    provider = provider_for(server.url)
    try:
        await provider.check()
        await provider.check()
    finally:
        await provider.aclose()
    assert [p["type"] for p in receiver.verified] == [CHECK_EVENT, CHECK_EVENT]
    first, second = (r.headers["webhook-id"] for r in server.requests)
    assert first != second  # two checks are two events


async def test_check_reports_a_receiver_that_refuses(server, receiver):
    provider = provider_for(server.url)
    try:
        receiver.reply = Reply(404, b"no such hook")
        with pytest.raises(ProviderMisconfigured, match="refused the check"):
            await provider.check()
        receiver.reply = Reply(503, b"")
        with pytest.raises(ProviderUnavailable):
            await provider.check()
    finally:
        await provider.aclose()


def test_sign_is_hmac_sha256_over_id_timestamp_and_body():
    key = signing_key(SECRET)
    body = json.dumps({"type": "x"}).encode()
    signature = sign(key, "msg_1", 1674087231, body)
    assert signature.startswith("v1,")
    assert signature == sign(key, "msg_1", 1674087231, body)
    assert signature != sign(key, "msg_1", 1674087232, body)
    assert signature != sign(key, "msg_2", 1674087231, body)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("c2VjcmV0LXdpdGhvdXQtcHJlZml4LTEyMzQ1Njc4", "must start with 'whsec_'"),
        ("whsec_not base64!!", "is not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
    ],
)
def test_a_malformed_secret_is_refused_with_what_is_wrong(secret, problem):
    with pytest.raises(ValidationError, match=problem):
        WebhookProviderConfig(url="https://hooks.example.com/h", secret=secret)


def test_an_unpadded_secret_is_accepted():
    unpadded = SECRET.rstrip("=")
    assert unpadded != SECRET
    assert signing_key(unpadded) == signing_key(SECRET)


def test_config_refuses_headers_that_herald_sets_and_unknown_fields():
    with pytest.raises(ValidationError, match="Webhook-Signature"):
        WebhookProviderConfig(
            url="https://hooks.example.com/h", secret=SECRET, headers={"Webhook-Signature": "x"}
        )
    with pytest.raises(ValidationError, match="extra"):
        WebhookProviderConfig(url="https://hooks.example.com/h", secret=SECRET, retries=3)
    with pytest.raises(ValidationError, match="https://"):
        WebhookProviderConfig(url="ftp://hooks.example.com/h", secret=SECRET)


def test_limits_come_from_the_config():
    config = WebhookProviderConfig(
        url="https://hooks.example.com/h", secret=SECRET, concurrency=3, per_second=20
    )
    provider = WebhookProvider(config)
    assert (provider.limits.concurrency, provider.limits.per_second) == (3, 20.0)
    assert "whsec_" not in repr(config)
