"""Real channels end to end: flows and campaigns run as real Temporal workflows by a real worker,
and every message goes through the real provider to a local partner that checks what it gets.

- Email: an aiosmtpd relay (tests/fakes/smtp_sink.py), configured through PUT /v1/providers/email.
- SMS and WhatsApp: a Twilio Messages API that checks basic auth and the exact form fields.
- Push: Google's token endpoint and FCM's messages:send in one local server.
- Webhook channel: a receiver that verifies each request with the `standardwebhooks` library.
- No lock held: a provider that waits, mid-send, for the test to commit a write elsewhere.

Campaigns scheduled through the API run on the time-skipping server (their send time is in the
future). Everything else runs on the real dev server with a send time already passed, so retry
back-off is real time: Retry-After: 1 waits one real second.
"""

import asyncio
import base64
import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text
from standardwebhooks import Webhook, WebhookVerificationError

from api.app import create_app
from herald.campaigns.contract import (
    CampaignSettings,
    MessageSnapshot,
    PathSnapshot,
    campaign_workflow_id,
)
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.delivery.provider_hub import AnyProvider, ProviderHub
from herald.delivery.provider_settings import parse_config, save
from herald.delivery.providers.base import (
    OutgoingMessage,
    Provider,
    ProviderUnavailable,
    SendReceipt,
)
from herald.delivery.providers.fcm import FcmConfig, FcmProvider
from herald.delivery.providers.registry import KINDS
from herald.delivery.providers.smtp import SmtpConfig, SmtpProvider
from herald.delivery.providers.twilio import TwilioConfig, TwilioProvider
from herald.delivery.providers.webhook import webhook_id_for
from herald.flows.graph import MessageContent
from herald.ingest.events import ingest
from herald.profiles.consent import set_consent
from models.enums import Channel, ConsentStatus
from models.events import EventIn
from models.lists import ListMembership, ProfileList
from models.profile import Consent, Profile
from models.types import utcnow
from tests.conftest import serve
from tests.fakes.google_fcm import ServiceAccountKey, google_fcm, unregistered
from tests.fakes.http_server import Reply, Request, fake_server
from tests.fakes.smtp_sink import Received, smtp_sink
from tests.fakes.twilio import (
    FakeTwilio,
    invalid_to,
    service_unavailable,
    too_many_requests,
)
from tests.flow_world import FlowWorld
from tests.test_campaign_scenarios import make_list, schedule, store
from tests.test_delivery import account as account  # noqa: F401  (fixture)
from tests.test_flows_e2e import customer as api_customer
from worker import build_worker

SECRET_KEY = "channels-e2e-secret-key"  # the API and the worker decrypt stored credentials
LOOPBACK = ["127.0.0.1"]  # the webhook receiver is local: allow-listed as an operator would
ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-0042"
SMS_FROM = "+15005550006"
WHATSAPP_FROM = "+14155238886"
CONTENT_SID = "HX" + "0123456789abcdef" * 2
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"herald-e2e-webhook-signing-key-01").decode()


@pytest.fixture(autouse=True)
def forget_provider_state(db, account):
    """Known account settings (quiet hours 21:00-08:00, every channel on) for each test; saved
    providers and pacing slots outlive a test (they are not transient tables): forgotten."""
    yield
    db.execute("DELETE FROM channel_provider")
    db.execute("DELETE FROM provider_pace")


def worker_settings(db) -> Settings:
    return Settings(
        database_url=db.url,
        task_queue=f"channels-{uuid.uuid4().hex[:8]}",
        search_attributes=False,
        secret_key=SECRET_KEY,
        webhook_allow_hosts=LOOPBACK,
    )


@asynccontextmanager
async def running_worker(env, db, **providers: AnyProvider) -> AsyncIterator[FlowWorld]:
    """A worker on a fresh task queue. Its hub sends through `providers` (by channel), and for
    any other channel through what the account configured (the channel_provider table)."""
    settings = worker_settings(db)
    hub = ProviderHub(settings, fixed=providers)
    try:
        async with build_worker(env.client, settings, db.engine, hub=hub):
            yield FlowWorld(env, db, settings)
    finally:
        hub.close()


def daytime_zone() -> str:
    """A fixed-offset zone where it is about noon now, so SMS quiet hours hold nothing here."""
    offset = (12 - datetime.now(UTC).hour + 12) % 24 - 12
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-3 is UTC+3


def shopper(
    db,
    email: str,
    *,
    first_name: str = "Ada",
    phone: str | None = None,
    push_tokens: tuple[str, ...] = (),
    consent: tuple[str, ...] = ("email",),
) -> str:
    with session_scope(db.engine) as session:
        profile = Profile(
            id=new_id("pr"),
            email=email,
            phone=phone,
            first_name=first_name,
            timezone=daytime_zone(),
            push_tokens=list(push_tokens),
        )
        session.add(profile)
        session.flush()
        for channel in consent:
            set_consent(session, profile, Channel(channel), ConsentStatus.subscribed, "test")
        return profile.id


def one_message_flow(world: FlowWorld, channel: str, content: dict[str, Any]) -> str:
    return world.flow(
        {
            "trigger": {"type": "metric", "metric": "Joined"},
            "steps": [{"id": "hello", "type": "message", "channel": channel, "content": content}],
        }
    )


async def campaign_now(world: FlowWorld, channel: str, content: dict[str, Any], list_id: str):
    """A one-message campaign to a list, its send time already passed: it sends at once."""
    at = (utcnow() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    message = MessageSnapshot(
        id=new_id("cm"),
        channel=channel,
        content=MessageContent(**content),
        send_at_local=at,
        smart_sending=False,
    )
    path = PathSnapshot(
        id=new_id("pa"), position=0, name="All", include_lists=[list_id], messages=[message]
    )
    snapshot = store(world, CampaignSettings(campaign_id=new_id("cp"), name="Channels"), [path])
    return await schedule(world, snapshot)


def deliveries(db) -> list[Any]:
    return db.rows(
        "SELECT id, idempotency_key, profile_id, status, reason, provider, provider_message_id,"
        " segments, to_address, workflow_id FROM delivery ORDER BY id"
    )


async def retried_attempt(world: FlowWorld, workflow_id: str) -> Any:
    """The one activity attempt of the workflow that came after a failed one, from its history:
    the started event of that attempt carries its number and the failure it was retried after
    (with the retry delay the activity asked for)."""
    handle = world.client.get_workflow_handle(workflow_id)
    started = [
        event.activity_task_started_event_attributes
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_started_event_attributes")
        and event.activity_task_started_event_attributes.attempt > 1
    ]
    [attempt] = started
    return attempt


# ---- email over SMTP, configured through the API ------------------------------------------------


@pytest.fixture
async def api_stack(skipping_env, db, keys):
    """The API over real HTTP and a worker on the time-skipping server, sharing one database
    and one secret key (the API stores credentials encrypted, the worker reads them)."""
    settings = worker_settings(db)
    hub = ProviderHub(settings)
    api_settings = Settings(
        database_url=db.url,
        temporal_address=skipping_env.client.service_client.config.target_host,
        task_queue=settings.task_queue,
        api_key_cache_seconds=0,
        search_attributes=False,
        secret_key=SECRET_KEY,
    )
    app = create_app(api_settings, engine=db.engine)
    try:
        async with build_worker(skipping_env.client, settings, db.engine, hub=hub):
            with serve(app) as base_url:
                admin = httpx.AsyncClient(
                    base_url=base_url,
                    headers={"Authorization": f"Bearer {keys.private}"},
                    timeout=30,
                )
                writer = httpx.AsyncClient(
                    base_url=base_url,
                    headers={"Authorization": f"Bearer {keys.write}"},
                    timeout=30,
                )
                async with admin, writer:
                    yield FlowWorld(skipping_env, db, settings), admin, writer
    finally:
        hub.close()


async def configure_relay(admin: httpx.AsyncClient, sink) -> None:
    response = await admin.put(
        "/v1/providers/email",
        json={
            "provider": "smtp",
            "config": {"host": "127.0.0.1", "port": sink.port, "tls": "none", "sender": "x@x.io"},
            "check": True,
        },
    )
    assert response.status_code == 200, response.text
    assert (response.json()["provider"], response.json()["source"]) == ("smtp", "account")
    # The check was a real SMTP session with the relay: EHLO, NOOP, QUIT.
    assert (sink.sessions_opened, sink.noops, sink.quits, sink.received) == (1, 1, 1, [])


def check_email(
    received: Received,
    row: Any,
    *,
    sender: str,
    sender_name: str,
    subject: str,
    reply_to: str | None,
    greeting: str,
) -> None:
    """One email as the relay got it: envelope, headers, both MIME parts, personalization."""
    email = received.message
    assert (received.mail_from, received.rcpt_tos) == (sender, [row.to_address])
    [author] = email["From"].addresses
    assert (author.display_name, author.addr_spec) == (sender_name, sender)
    assert email["To"] == row.to_address
    assert email["Reply-To"] == reply_to  # None: no Reply-To header at all
    assert email["Subject"] == subject
    # The Message-ID derives from the idempotency key (every attempt carries the same one) and
    # is what the delivery row recorded as the provider's message id.
    key_hash = hashlib.sha256(row.idempotency_key.encode()).hexdigest()[:32]
    assert email["Message-ID"] == f"<{key_hash}@{sender.rpartition('@')[2]}>"
    assert row.provider_message_id == email["Message-ID"]
    assert email["X-Herald-Delivery-Id"] == row.id
    assert email.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in email.iter_parts()] == ["text/plain", "text/html"]
    plain = email.get_body(("plain",)).get_content()
    html = email.get_body(("html",)).get_content()
    assert greeting in html and f"<p>{greeting}</p>" in html
    # The text part is derived from the HTML: no markup, links written out.
    assert greeting in plain and "<" not in plain
    assert "(https://shop.example/" in plain
    assert "{{" not in plain + html + email["Subject"]


async def test_a_flow_email_reaches_the_relay_with_its_headers_and_both_parts(api_stack):
    world, admin, writer = api_stack
    with smtp_sink() as sink:
        await configure_relay(admin, sink)
        flow = {
            "name": "Abandoned checkout",
            "status": "live",
            "trigger": {"type": "metric", "metric": "Started Checkout"},
            "steps": [
                {
                    "id": "reminder",
                    "type": "message",
                    "channel": "email",
                    "content": {
                        "subject": "{{ profile.first_name }}, your cart is waiting",
                        "body": "<p>Hi {{ profile.first_name }},</p><p>Your "
                        '<a href="https://shop.example/cart">cart</a> is saved.</p>',
                        "sender": "care@shop.example",
                        "sender_name": "Shop Care",
                        "reply_to": "help@shop.example",
                    },
                }
            ],
        }
        created = await admin.post("/v1/flows", json=flow)
        assert created.status_code == 201, created.text
        await api_customer(admin, "ada@example.com", "Ada")
        accepted = await writer.post(
            "/v1/events",
            json={
                "metric": "Started Checkout",
                "profile": {"email": "ada@example.com"},
                "unique_id": "cart-1",
            },
        )
        assert accepted.status_code == 202
        await world.route()
        await world.until(lambda: len(sink.received) == 1)

    [row] = deliveries(world.db)
    assert (row.status, row.provider) == ("sent", "smtp")
    [received] = sink.received
    check_email(
        received,
        row,
        sender="care@shop.example",
        sender_name="Shop Care",
        subject="Ada, your cart is waiting",
        reply_to="help@shop.example",
        greeting="Hi Ada,",
    )


async def test_a_campaign_email_reaches_the_relay_personalized_per_recipient(api_stack):
    world, admin, _ = api_stack
    with smtp_sink() as sink:
        await configure_relay(admin, sink)
        ada = await api_customer(admin, "ada@example.com", "Ada")
        bob = await api_customer(admin, "bob@example.com", "Bob")
        members = make_list(world, "Customers", ada, bob)
        local = (await world.now()).astimezone(ZoneInfo("Europe/Amsterdam"))
        day1 = (local + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
        cid = (
            await admin.post(
                "/v1/campaigns", json={"name": "Winter sale", "timezone": "Europe/Amsterdam"}
            )
        ).json()["id"]
        path = (
            await admin.post(f"/v1/campaigns/{cid}/paths", json={"include_lists": [members]})
        ).json()
        created = await admin.post(
            f"/v1/campaigns/{cid}/paths/{path['id']}/messages",
            json={
                "channel": "email",
                "send_at": day1.strftime("%Y-%m-%dT%H:%M"),
                "content": {
                    "subject": "Winter sale, {{ profile.first_name }}",
                    "body": "<p>Hello {{ profile.first_name }}!</p><p>Everything is 20% off. "
                    '<a href="https://shop.example/unsubscribe">unsubscribe</a></p>',
                    "sender": "news@shop.example",
                    "sender_name": "Shop News",
                },
            },
        )
        assert created.status_code == 201, created.text
        scheduled = await admin.post(f"/v1/campaigns/{cid}/schedule")
        assert scheduled.status_code == 200, scheduled.text
        await world.env.sleep(day1 + timedelta(minutes=1) - await world.now())
        await world.until(lambda: len(sink.received) == 2)
        handle = world.client.get_workflow_handle(campaign_workflow_id(cid))
        assert await handle.result() == "sent"

    rows = {row.id: row for row in deliveries(world.db)}
    assert {(r.profile_id, r.status, r.provider) for r in rows.values()} == {
        (ada, "sent", "smtp"),
        (bob, "sent", "smtp"),
    }
    names = {ada: "Ada", bob: "Bob"}
    for received in sink.received:
        row = rows[received.message["X-Herald-Delivery-Id"]]
        name = names[row.profile_id]
        check_email(
            received,
            row,
            sender="news@shop.example",
            sender_name="Shop News",
            subject=f"Winter sale, {name}",
            reply_to=None,
            greeting=f"Hello {name}!",
        )
    report = (await admin.get(f"/v1/campaigns/{cid}/report")).json()
    [message] = report["paths"][0]["messages"]
    assert message["sent"] == 2


# ---- a large campaign over the SMTP pool --------------------------------------------------------

POOL = 4


def bulk_audience(db, count: int) -> tuple[str, list[str]]:
    """`count` subscribed profiles on one list, written in bulk; (list id, their emails)."""
    now = utcnow()
    ids = [f"pr_bulk{i:05d}" for i in range(count)]
    list_id = new_id("li")
    with db.engine.begin() as conn:
        conn.execute(
            Profile.__table__.insert(),
            [
                {
                    "id": p,
                    "email": f"{p}@example.com",
                    "first_name": f"N{p[-5:]}",
                    "push_tokens": [],
                    "properties": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for p in ids
            ],
        )
        conn.execute(
            Consent.__table__.insert(),
            [
                {
                    "profile_id": p,
                    "channel": "email",
                    "status": "subscribed",
                    "source": "test",
                    "updated_at": now,
                }
                for p in ids
            ],
        )
        conn.execute(
            ProfileList.__table__.insert(),
            [
                {
                    "id": list_id,
                    "name": "Bulk",
                    "description": "",
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        conn.execute(
            ListMembership.__table__.insert(),
            [{"list_id": list_id, "profile_id": p, "added_at": now} for p in ids],
        )
    return list_id, [f"{p}@example.com" for p in ids]


def header(received: Received, name: str) -> str | None:
    """One header, without parsing the whole message (thousands of full parses take seconds)."""
    return BytesHeaderParser(policy=compat32).parsebytes(received.data)[name]


async def test_a_2000_recipient_campaign_uses_at_most_the_pool_of_connections(temporal_server, db):
    with smtp_sink() as sink:
        relay = SmtpProvider(
            SmtpConfig(
                host="127.0.0.1",
                port=sink.port,
                tls="none",
                sender="news@shop.example",
                pool_size=POOL,
                # High enough that no connection is retired mid-campaign: every session the
                # relay sees is one the pool opened and kept.
                max_messages_per_connection=10_000,
            )
        )
        list_id, emails = bulk_audience(db, 2_000)
        async with running_worker(temporal_server, db, email=relay) as world:
            handle = await campaign_now(
                world,
                "email",
                {
                    "subject": "Hi {{ profile.first_name }}",
                    "body": "<p>Hello {{ profile.first_name }}</p>",
                    "sender": "news@shop.example",
                },
                list_id,
            )
            assert await asyncio.wait_for(handle.result(), 120) == "sent"

    assert sink.max_open == POOL  # the pool was used concurrently, never beyond its size
    assert sink.sessions_opened == POOL  # and its connections carried both pages
    per_recipient = Counter(address for r in sink.received for address in r.rcpt_tos)
    assert per_recipient == Counter({address: 1 for address in emails})
    assert len({header(r, "Message-ID") for r in sink.received}) == 2_000
    for received in sink.received[::500]:  # a few, parsed whole: each rendered for its recipient
        [address] = received.rcpt_tos
        html = received.message.get_body(("html",)).get_content()
        assert f"<p>Hello N{address.removeprefix('pr_bulk')[:5]}</p>" in html
    assert db.scalar("SELECT count(*) FROM delivery WHERE status = 'sent'") == 2_000
    assert db.scalar("SELECT count(DISTINCT provider_message_id) FROM delivery") == 2_000


# ---- SMS and WhatsApp through Twilio ------------------------------------------------------------


@dataclass
class TimedTwilio(FakeTwilio):
    """The fake Twilio, also noting when each request arrived (to see Retry-After honoured)."""

    arrivals: list[float] = field(default_factory=list)

    def handle(self, request: Request) -> Reply:
        self.arrivals.append(time.monotonic())
        return super().handle(request)


@contextmanager
def twilio_fake() -> Iterator[TimedTwilio]:
    fake = TimedTwilio(ACCOUNT, auth_token=TOKEN)
    with fake_server(fake.handle) as server:
        fake.server = server
        yield fake


def twilio(fake: FakeTwilio) -> TwilioProvider:
    # Twilio's published long-code rate (1/s) stays on: the sends are paced as in production.
    return TwilioProvider(
        TwilioConfig(
            account_sid=ACCOUNT,
            auth_token=TOKEN,
            from_number=SMS_FROM,
            whatsapp_from=WHATSAPP_FROM,
            base_url=fake.url,
            timeout_seconds=5,
        )
    )


def basic_auth_users(fake: FakeTwilio) -> set[str]:
    return {
        base64.b64decode(r.headers["authorization"].removeprefix("Basic ")).decode()
        for r in fake.requests
    }


async def test_twilio_429_with_retry_after_then_201_sends_one_sms(temporal_server, db):
    with twilio_fake() as fake:
        fake.script(too_many_requests(retry_after="1"))
        async with running_worker(temporal_server, db, sms=twilio(fake)) as world:
            ada = shopper(db, "ada@example.com", phone="+31612345678", consent=("sms",))
            one_message_flow(world, "sms", {"body": "Hi {{ profile.first_name }}, 20% off"})
            await world.event("Joined", ada)

    assert fake.refusals == []
    assert fake.accepted == [{"To": "+31612345678", "From": SMS_FROM, "Body": "Hi Ada, 20% off"}]
    assert basic_auth_users(fake) == {f"{ACCOUNT}:{TOKEN}"}
    [row] = deliveries(db)
    # The activity asked Temporal for Twilio's Retry-After, and Temporal waited that long.
    retry = await retried_attempt(world, row.workflow_id)
    assert retry.attempt == 2
    assert retry.last_failure.application_failure_info.type == "ProviderUnavailable"
    assert retry.last_failure.application_failure_info.next_retry_delay.ToTimedelta() == (
        timedelta(seconds=1)
    )
    first, second = fake.arrivals
    assert second - first >= 0.9
    assert (row.status, row.reason, row.provider, row.segments) == ("sent", None, "twilio", 1)
    assert row.provider_message_id.startswith("SM")
    assert world.deliveries(ada) == [("hello", "sent", None)]


async def test_twilio_503_twice_then_201_sends_one_campaign_sms(temporal_server, db):
    # An emoji makes it UCS-2: 78 UTF-16 units rendered, two segments of 67 (one would be 70).
    body = "Last pairs in your size \N{ATHLETIC SHOE}, {{ profile.first_name }}! " + "x" * 45
    with twilio_fake() as fake:
        fake.script(service_unavailable(), service_unavailable())
        async with running_worker(temporal_server, db, sms=twilio(fake)) as world:
            ada = shopper(db, "ada@example.com", phone="+31612345678", consent=("sms",))
            handle = await campaign_now(world, "sms", {"body": body}, make_list(world, "L", ada))
            assert await asyncio.wait_for(handle.result(), 30) == "sent"

    assert len(fake.requests) == 3 and fake.refusals == []
    [form] = fake.accepted
    assert form == {
        "To": "+31612345678",
        "From": SMS_FROM,
        "Body": "Last pairs in your size \N{ATHLETIC SHOE}, Ada! " + "x" * 45,
    }
    [row] = deliveries(db)
    assert (row.profile_id, row.status, row.provider, row.segments) == (ada, "sent", "twilio", 2)
    retry = await retried_attempt(world, row.workflow_id)  # the page, sent on its third attempt
    assert retry.attempt == 3
    assert retry.last_failure.application_failure_info.type == "ProviderUnavailable"


async def test_twilio_21211_fails_the_sms_as_invalid_address_without_a_retry(temporal_server, db):
    with twilio_fake() as fake:
        fake.script(invalid_to("+15005550001"))
        async with running_worker(temporal_server, db, sms=twilio(fake)) as world:
            bad = shopper(db, "bad@example.com", phone="+15005550001", consent=("sms",))
            one_message_flow(world, "sms", {"body": "Hi {{ profile.first_name }}"})
            await world.event("Joined", bad)
            [enrollment] = world.enrollments(bad)

    [request] = fake.requests
    assert request.form() == {"To": ["+15005550001"], "From": [SMS_FROM], "Body": ["Hi Ada"]}
    assert fake.accepted == [] and fake.refusals == []
    [row] = deliveries(db)
    assert (row.status, row.reason, row.provider) == ("failed", "invalid_address", "twilio")
    assert world.deliveries(bad) == [("hello", "failed", "invalid_address")]
    assert enrollment.status == "completed"


async def test_a_whatsapp_template_message_carries_content_sid_and_variables(temporal_server, db):
    template = {
        "content_sid": CONTENT_SID,
        "variables": {"1": "{{ profile.first_name }}", "2": "WINTER20"},
    }
    with twilio_fake() as fake:
        async with running_worker(temporal_server, db, whatsapp=twilio(fake)) as world:
            ada = shopper(db, "ada@example.com", phone="+31612345678", consent=("whatsapp",))
            one_message_flow(
                world, "whatsapp", {"body": "Your code", "whatsapp_template": template}
            )
            await world.event("Joined", ada)

    assert fake.refusals == []
    [form] = fake.accepted
    assert set(form) == {"To", "From", "ContentSid", "ContentVariables"}  # no free-form Body
    assert (form["To"], form["From"], form["ContentSid"]) == (
        "whatsapp:+31612345678",
        f"whatsapp:{WHATSAPP_FROM}",
        CONTENT_SID,
    )
    assert json.loads(form["ContentVariables"]) == {"1": "Ada", "2": "WINTER20"}
    [row] = deliveries(db)
    assert (row.status, row.provider) == ("sent", "twilio")


# ---- push through FCM ---------------------------------------------------------------------------


async def test_a_push_to_two_tokens_with_one_unregistered_drops_that_token(temporal_server, db):
    key = ServiceAccountKey.generate()
    with google_fcm(key) as fcm:
        fcm.script("tok-dead", unregistered())
        provider = FcmProvider(
            FcmConfig(service_account_json=key.json(fcm.token_uri), base_url=fcm.url)
        )
        async with running_worker(temporal_server, db, push=provider) as world:
            ada = shopper(
                db, "ada@example.com", push_tokens=("tok-live", "tok-dead"), consent=("push",)
            )
            one_message_flow(
                world,
                "push",
                {"subject": "Back in stock", "body": "{{ profile.first_name }}, your size is back"},
            )
            await world.event("Joined", ada)
        sends = [
            r.json()["message"]["token"] for r in fcm.server.requests if "messages:send" in r.path
        ]

    assert sorted(sends) == ["tok-dead", "tok-live"]  # one send per token
    assert fcm.grants == 1 and fcm.refused_grants == []  # one JWT grant, signature verified
    [row] = deliveries(db)  # one delivery for the profile
    assert (row.profile_id, row.status, row.provider) == (ada, "sent", "fcm")
    [delivered] = fcm.delivered
    assert delivered["token"] == "tok-live"
    assert delivered["notification"] == {"title": "Back in stock", "body": "Ada, your size is back"}
    assert delivered["data"]["herald_delivery_id"] == row.id
    with session_scope(db.engine) as session:
        assert session.get(Profile, ada).push_tokens == ["tok-live"]


# ---- the webhook channel ------------------------------------------------------------------------


class VerifyingReceiver:
    """A customer's endpoint: verifies every request with the Standard Webhooks reference
    library, answering 401 to one that does not verify."""

    def __init__(self, secret: str):
        self.verifier = Webhook(secret)
        self.verified: list[tuple[dict[str, str], dict[str, Any]]] = []

    def __call__(self, request: Request) -> Reply:
        try:
            payload = self.verifier.verify(request.body, request.headers)
        except WebhookVerificationError as exc:
            return Reply(401, {"error": str(exc)})
        self.verified.append((request.headers, payload))
        return Reply(200, {"ok": True})


async def test_a_webhook_channel_message_verifies_with_the_reference_library(temporal_server, db):
    receiver = VerifyingReceiver(WEBHOOK_SECRET)
    with fake_server(receiver) as server:
        settings = worker_settings(db)
        config = parse_config(
            KINDS["webhook"], {"url": f"{server.url}/sms-gateway", "secret": WEBHOOK_SECRET}
        )
        with session_scope(db.engine) as session:  # what PUT /v1/providers/sms stores
            save(session, Channel.sms, "webhook", config, settings)
        async with running_worker(temporal_server, db) as world:
            ada = shopper(db, "ada@example.com", phone="+31612345678", consent=("sms",))
            one_message_flow(world, "sms", {"body": "Hi {{ profile.first_name }}"})
            await world.event("Joined", ada)
        requests = list(server.requests)

    assert len(requests) == 1
    [(headers, payload)] = receiver.verified  # the one request verified
    [row] = deliveries(db)
    assert (row.status, row.provider) == ("sent", "webhook")
    assert payload["type"] == "message.created"
    assert payload["data"]["delivery_id"] == row.id
    assert (payload["data"]["to"], payload["data"]["body"]) == ("+31612345678", "Hi Ada")
    assert headers["webhook-id"] == webhook_id_for(row.idempotency_key) == row.provider_message_id
    # Signed by another secret, the same request does not verify.
    other = "whsec_" + base64.b64encode(b"some-other-receivers-secret-98765").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(requests[0].body, requests[0].headers)


# ---- no lock held while the provider talks ------------------------------------------------------


class GatedProvider(Provider):
    """Takes the message, then holds the send until the test opens the gate (at most 20 s)."""

    name = "gated"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.messages: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        self.messages.append(message)
        self.entered.set()
        if not await asyncio.to_thread(self.gate.wait, 20):
            raise ProviderUnavailable("the test never opened the gate")
        return SendReceipt(provider_message_id=f"gated-{message.delivery_id}")

    async def check(self) -> None:
        return None


def write_elsewhere(db, delivery_id: str) -> str:
    """From another connection, in one transaction: touches the claimed delivery row and the row
    the claim's transaction locked (the flow enrollment, or the campaign message); returns the
    delivery's status as this connection saw it."""
    with db.engine.begin() as conn:
        claimed = conn.execute(
            text("SELECT status, run_kind, workflow_id, step_id FROM delivery WHERE id = :id"),
            {"id": delivery_id},
        ).one()  # the claim was committed before the provider was called
        conn.execute(
            text("UPDATE delivery SET subject = subject WHERE id = :id"), {"id": delivery_id}
        )
        if claimed.run_kind == "flow":
            locked = conn.execute(
                text("UPDATE flow_enrollment SET status = status WHERE workflow_id = :w"),
                {"w": claimed.workflow_id},
            )
        else:
            locked = conn.execute(
                text("UPDATE campaign_message SET status = status WHERE id = :m"),
                {"m": claimed.step_id},
            )
        assert locked.rowcount == 1
    return claimed.status


@pytest.mark.parametrize("run", ["flow", "campaign"])
async def test_no_lock_is_held_while_the_worker_waits_on_the_provider(temporal_server, db, run):
    gated = GatedProvider()
    async with running_worker(temporal_server, db, email=gated) as world:
        ada = shopper(db, "ada@example.com")
        content = {"subject": "Hi", "body": "Hello {{ profile.first_name }}"}
        # While the provider waits, this event loop (which runs the worker) touches no database:
        # a lock held by the send would otherwise block the loop instead of failing the test.
        if run == "flow":
            one_message_flow(world, "email", content)
            joined = EventIn.model_validate(
                {"metric": "Joined", "profile": {"email": "ada@example.com"}, "unique_id": "j-1"}
            )
            ingest(db.engine, world.metrics, [joined], "test")
            sending = asyncio.create_task(asyncio.to_thread(world.router.route_once))
        else:
            handle = await campaign_now(world, "email", content, make_list(world, "L", ada))
            sending = asyncio.create_task(asyncio.wait_for(handle.result(), 30))
        try:
            assert await asyncio.to_thread(gated.entered.wait, 20), "the provider was never called"
            [message] = gated.messages
            # Were the send holding SQLite's write lock or a PostgreSQL row lock, this write
            # would wait for the provider, which waits for this write: a deadlock, cut at 5 s.
            try:
                status = await asyncio.wait_for(
                    asyncio.to_thread(write_elsewhere, db, message.delivery_id), 5
                )
            except TimeoutError:
                pytest.fail("a write from another connection waited for the send's lock")
            assert status == "sending"
        finally:
            gated.gate.set()
        await sending
        if run == "flow":
            await world.settle()

    [row] = deliveries(db)
    assert (row.status, row.provider) == ("sent", "gated")
    assert row.provider_message_id == f"gated-{row.id}"
