"""Webhook and internal-alert activities against a real local HTTP(S) server.

The server runs in a thread and replies from a per-path script; loopback is allow-listed, as
an operator would for an in-cluster receiver.
"""

import json
import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.webhooks import WebhookActivities
from herald.cli.devstack import find_binary
from herald.core.config import Settings
from herald.delivery import url_safety
from models.webhook_dto import InternalAlertCall, WebhookCall, WebhookResult
from tests.conftest import free_port
from workflows.policies import WEBHOOK_RETRY, WEBHOOK_SCHEDULE_TO_CLOSE, WEBHOOK_START_TO_CLOSE


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # hold the response until the test ends


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """What the webhook receiver answers (per path, in order; the last reply repeats)."""

    def __init__(self):
        self.script: dict[str, list[Reply]] = {}
        self.requests: list[Received] = []
        self.release = threading.Event()
        self.base_url = ""

    def reply(self, path: str, *replies: Reply) -> str:
        self.script[path] = list(replies)
        return self.base_url + path

    def next_reply(self, path: str) -> Reply:
        replies = self.script.get(path) or [Reply(status=404)]
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        receiver.requests.append(Received(self.path, headers, body))
        reply = receiver.next_reply(self.path)
        if reply.hang:
            receiver.release.wait(timeout=10)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            for start in range(0, len(reply.body), 16 * 1024):
                self.wfile.write(reply.body[start : start + 16 * 1024])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: that is what the size limit does

    def log_message(self, format: str, *args) -> None:
        pass  # keep the test output quiet


@contextmanager
def receiving_server(ssl_context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.receiver = receiver  # type: ignore[attr-defined]
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    scheme = "https" if ssl_context else "http"
    receiver.base_url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving_server() as receiver:
        yield receiver


def settings(**overrides) -> Settings:
    values = {"webhook_allow_hosts": ["127.0.0.1"], "webhook_timeout_seconds": 5.0}
    return Settings(**(values | overrides))


def webhook_call(url: str, **overrides) -> WebhookCall:
    values = {
        "url": url,
        "headers": {"X-Shop": "sneakers"},
        "body": json.dumps({"profile_id": "p1", "order": 42}),
        "idempotency_key": "flow/f1/p1/e1:webhook-1",
        "workflow_id": "flow/f1/p1/e1",
        "step_id": "webhook-1",
    }
    return WebhookCall(**(values | overrides))


async def call(activities: WebhookActivities, request: WebhookCall) -> WebhookResult:
    return await ActivityEnvironment().run(activities.call_webhook, request)


async def test_2xx_delivers_the_body_with_idempotency_key_and_json_content_type(receiver):
    url = receiver.reply("/hook", Reply(status=202))
    result = await call(WebhookActivities(settings()), webhook_call(url))

    assert result == WebhookResult(status="delivered", http_status=202, response_bytes=12)
    [received] = receiver.on("/hook")
    assert json.loads(received.body) == {"profile_id": "p1", "order": 42}
    assert received.headers["idempotency-key"] == "flow/f1/p1/e1:webhook-1"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["x-shop"] == "sneakers"


async def test_step_headers_cannot_override_host_or_idempotency_key(receiver):
    url = receiver.reply("/hook", Reply())
    request = webhook_call(
        url, headers={"Host": "evil.example", "idempotency-key": "mine", "Content-Type": "a/b"}
    )
    await call(WebhookActivities(settings()), request)

    [received] = receiver.on("/hook")
    assert received.headers["host"] == receiver.base_url.removeprefix("http://")
    assert received.headers["idempotency-key"] == "flow/f1/p1/e1:webhook-1"
    assert received.headers["content-type"] == "a/b"  # a step may choose its content type


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_rate_limit_and_server_errors_raise_a_retryable_error(receiver, status):
    url = receiver.reply("/hook", Reply(status=status))
    with pytest.raises(ApplicationError) as info:
        await call(WebhookActivities(settings()), webhook_call(url))

    assert info.value.type == "WebhookTransient"
    assert not info.value.non_retryable
    assert str(status) in info.value.message


async def test_retry_after_seconds_sets_the_next_retry_delay(receiver):
    url = receiver.reply("/hook", Reply(status=429, headers={"Retry-After": "120"}))
    with pytest.raises(ApplicationError) as info:
        await call(WebhookActivities(settings()), webhook_call(url))
    assert info.value.next_retry_delay == timedelta(seconds=120)


@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_other_client_errors_skip_the_step(receiver, status):
    url = receiver.reply("/hook", Reply(status=status, body=b"nope"))
    result = await call(WebhookActivities(settings()), webhook_call(url))
    assert result == WebhookResult(
        status="skipped", http_status=status, reason=f"http_{status}", response_bytes=4
    )


async def test_redirect_is_not_followed(receiver):
    url = receiver.reply("/hook", Reply(status=302, headers={"Location": "/elsewhere"}))
    receiver.reply("/elsewhere", Reply())
    result = await call(WebhookActivities(settings()), webhook_call(url))

    assert (result.status, result.reason) == ("skipped", "http_302")
    assert len(receiver.on("/hook")) == 1
    assert receiver.on("/elsewhere") == []


async def test_huge_response_is_read_only_up_to_the_limit(receiver):
    url = receiver.reply("/hook", Reply(body=b"x" * (8 * 1024 * 1024)))
    activities = WebhookActivities(settings(webhook_max_response_bytes=1024))
    result = await call(activities, webhook_call(url))
    assert (result.status, result.response_bytes) == ("delivered", 1024)


async def test_timeout_raises_a_retryable_error(receiver):
    url = receiver.reply("/hook", Reply(hang=True))
    activities = WebhookActivities(settings(webhook_timeout_seconds=0.3))
    with pytest.raises(ApplicationError) as info:
        await call(activities, webhook_call(url))
    assert info.value.type == "WebhookTransient"
    assert not info.value.non_retryable


async def test_connection_refused_raises_a_retryable_error():
    url = f"http://127.0.0.1:{free_port()}/hook"
    with pytest.raises(ApplicationError) as info:
        await call(WebhookActivities(settings()), webhook_call(url))
    assert info.value.type == "WebhookTransient"


async def test_unsafe_url_is_skipped_without_a_request(receiver):
    url = receiver.reply("/hook", Reply())
    result = await call(WebhookActivities(settings(webhook_allow_hosts=[])), webhook_call(url))

    assert result.status == "skipped"
    assert result.reason == "unsafe_url"
    assert result.detail == "host '127.0.0.1' resolves to a loopback address (127.0.0.1)"
    assert receiver.requests == []


TLS_HOST = "hooks.example.test"


@pytest.fixture
def tls_cert(tmp_path) -> tuple[Path, Path]:
    """A self-signed certificate for TLS_HOST: (cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={TLS_HOST}"]
        + ["-addext", f"subjectAltName=DNS:{TLS_HOST}"],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_connects_to_the_checked_address_with_the_original_host_name(
    tls_cert, monkeypatch
):
    """The host name is resolved once, by the check; the request goes to that address, and
    TLS still presents (SNI) and verifies the certificate for the name."""
    cert, key = tls_cert
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_tls.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    lookups: list[str] = []

    def resolve(name: str, port: int) -> list[str]:
        lookups.append(name)
        return ["127.0.0.1"]

    monkeypatch.setattr(url_safety, "resolve_host", resolve)
    client_tls = ssl.create_default_context(cafile=str(cert))

    with receiving_server(server_tls) as receiver:
        port = receiver.base_url.rsplit(":", 1)[1]
        receiver.reply("/hook", Reply())
        activities = WebhookActivities(settings(webhook_allow_hosts=[TLS_HOST]), verify=client_tls)
        result = await call(activities, webhook_call(f"https://{TLS_HOST}:{port}/hook"))

    assert result.status == "delivered"
    assert receiver.on("/hook")[0].headers["host"] == f"{TLS_HOST}:{port}"
    assert sni == [TLS_HOST]
    assert lookups == [TLS_HOST]


async def test_email_alert_with_the_outbox_provider_is_logged():
    alert = InternalAlertCall(
        via="email",
        to="ops@shop.example",
        subject="VIP order",
        body="Profile p1 ordered for 500 EUR",
        idempotency_key="k1",
        workflow_id="flow/f1/p1/e1",
        step_id="alert-1",
    )
    activities = WebhookActivities(settings())
    result = await ActivityEnvironment().run(activities.send_internal_alert, alert)
    assert result == WebhookResult(status="delivered", reason="logged")


async def test_email_alert_over_smtp_reaches_the_mail_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Inbox(Message):
        def __init__(self):
            super().__init__()
            self.messages = []

        def handle_message(self, message) -> None:
            self.messages.append(message)

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        activities = WebhookActivities(
            settings(email_provider="smtp", smtp_host="127.0.0.1", smtp_port=controller.port)
        )
        alert = InternalAlertCall(
            via="email",
            to="ops@shop.example",
            subject="VIP order",
            body="Profile p1 ordered for 500 EUR",
            idempotency_key="k1",
            workflow_id="flow/f1/p1/e1",
            step_id="alert-1",
        )
        result = await ActivityEnvironment().run(activities.send_internal_alert, alert)
    finally:
        controller.stop()

    assert result == WebhookResult(status="delivered")
    [message] = inbox.messages
    assert (message["To"], message["Subject"]) == ("ops@shop.example", "VIP order")
    assert "500 EUR" in message.get_payload()


async def test_webhook_alert_posts_a_json_summary(receiver):
    url = receiver.reply("/alerts", Reply())
    alert = InternalAlertCall(
        via="webhook",
        to=url,
        subject="VIP order",
        body="Profile p1 ordered",
        idempotency_key="k1",
        workflow_id="flow/f1/p1/e1",
        step_id="alert-1",
    )
    activities = WebhookActivities(settings())
    result = await ActivityEnvironment().run(activities.send_internal_alert, alert)

    assert result.status == "delivered"
    [received] = receiver.on("/alerts")
    assert json.loads(received.body) == {
        "text": "VIP order\n\nProfile p1 ordered",
        "subject": "VIP order",
        "body": "Profile p1 ordered",
        "workflow_id": "flow/f1/p1/e1",
        "step_id": "alert-1",
    }
    assert received.headers["idempotency-key"] == "k1"


# Through a real worker: the retry policy the workflow side uses, with time skipped.


@workflow.defn(sandboxed=False)
class WebhookStepWorkflow:
    @workflow.run
    async def run(self, request: WebhookCall) -> WebhookResult:
        return await workflow.execute_activity_method(
            WebhookActivities.call_webhook,
            request,
            retry_policy=WEBHOOK_RETRY,
            schedule_to_close_timeout=WEBHOOK_SCHEDULE_TO_CLOSE,
            start_to_close_timeout=WEBHOOK_START_TO_CLOSE,
        )


@pytest.fixture(scope="module")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"),
        data_converter=pydantic_data_converter,
        # The default 5 s is too short on a loaded 2-core CI machine (seen once).
        test_server_startup_timeout=timedelta(seconds=60),
    )
    yield env
    await env.shutdown()


async def run_webhook_step(client: Client, request: WebhookCall) -> WebhookResult:
    task_queue = f"webhooks-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[WebhookStepWorkflow],
        activities=[WebhookActivities(settings()).call_webhook],
    ):
        return await client.execute_workflow(
            WebhookStepWorkflow.run, request, id=f"test-{uuid.uuid4()}", task_queue=task_queue
        )


async def test_workflow_retries_5xx_with_backoff_until_delivered(receiver, time_skipping_env):
    url = receiver.reply("/hook", Reply(status=503), Reply(status=503), Reply(status=200))
    started = await time_skipping_env.get_current_time()

    result = await run_webhook_step(time_skipping_env.client, webhook_call(url))

    assert result.status == "delivered"
    attempts = receiver.on("/hook")
    assert len(attempts) == 3
    assert {a.headers["idempotency-key"] for a in attempts} == {"flow/f1/p1/e1:webhook-1"}
    # Backoff 10 s then 20 s, skipped by the test server.
    assert await time_skipping_env.get_current_time() - started >= timedelta(seconds=30)


async def test_workflow_skips_a_4xx_on_the_first_attempt(receiver, time_skipping_env):
    url = receiver.reply("/hook", Reply(status=400))
    result = await run_webhook_step(time_skipping_env.client, webhook_call(url))

    assert (result.status, result.reason) == ("skipped", "http_400")
    assert len(receiver.on("/hook")) == 1
