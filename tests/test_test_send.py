"""Test sends through the API: a campaign message or flow message step delivered now, to a raw
address over a real SMTP server (aiosmtpd) or to a profile through the outbox, marked test and
counted by no report, smart sending, cap or journey result; bad input named."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from activities.delivery import DeliveryActivities
from api.app import create_app
from herald.analytics.engagement import record_engagement
from herald.campaigns.store import load_campaign
from herald.campaigns.transitions import anything_sent
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.routing.contract import RoutedItem
from models.account import Account
from models.delivery import Delivery
from models.delivery_dto import DeliveryRequest
from models.enums import OutboxKind
from models.flows import FlowVersion
from tests.conftest import free_port, serve
from tests.fakes.smtp_sink import SmtpSink, smtp_sink

SHOP = "shop@example.com"
GREETING = "Hi {{ profile.first_name | default: 'there' }}"
HTML = (
    "<p>" + GREETING + ", the drop is live.</p>"
    "<p><a href='https://shop.test/drop'>Shop now</a> or <a href='https://shop.test/u'>"
    "unsubscribe</a></p>"
)


# ---- the world ----------------------------------------------------------------------------------


@pytest.fixture
def account(db) -> Iterator[Any]:
    """Changes account settings for one test; the row outlives tests, so it is restored."""
    with session_scope(db.engine) as session:
        before = session.get(Account, 1).model_dump()

    def configure(**fields: Any) -> None:
        with session_scope(db.engine) as session:
            row = session.get(Account, 1)
            for name, value in fields.items():
                setattr(row, name, value)
            session.add(row)

    yield configure
    configure(**{k: v for k, v in before.items() if k != "id"})


@contextmanager
def smtp_api(database, keys, sink: SmtpSink) -> Iterator[httpx.Client]:
    """The API of a deployment whose email goes over SMTP (HERALD_EMAIL_PROVIDER=smtp and
    HERALD_SMTP_*), to the sink."""
    settings = Settings(
        database_url=database.url,
        temporal_address=f"127.0.0.1:{free_port()}",
        api_key_cache_seconds=0,
        secret_key="tests-secret-key",
        email_provider="smtp",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_tls="none",
        smtp_sender="herald@shop.test",
        smtp_timeout_seconds=5,
    )
    with (
        serve(create_app(settings, engine=database.engine)) as base_url,
        httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {keys.private}"}, timeout=30
        ) as client,
    ):
        yield client


def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def errors(response: httpx.Response, status: int = 422) -> dict[str, str]:
    assert response.status_code == status, response.text
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


def profile(api, **body) -> str:
    body = {"email": "ada@example.com", "first_name": "Ada", **body}
    return ok(api.post("/v1/profiles", json=body), 201)["id"]


def campaign_message(api, channel: str = "email", **content) -> tuple[str, str]:
    """A draft campaign with one path and one message: (campaign id, message id)."""
    campaign = ok(api.post("/v1/campaigns", json={"name": "Sneaker drop"}), 201)["id"]
    path = ok(api.post(f"/v1/campaigns/{campaign}/paths", json={"name": "All"}), 201)["id"]
    content = content or {"subject": GREETING, "body": HTML, "sender": SHOP}
    body = {"channel": channel, "content": content, "send_at": "2099-01-01T09:00"}
    message = ok(api.post(f"/v1/campaigns/{campaign}/paths/{path}/messages", json=body), 201)
    return campaign, message["id"]


def post_test_send(api, campaign: str, message: str, **body) -> httpx.Response:
    return api.post(f"/v1/campaigns/{campaign}/messages/{message}/test-send", json=body)


def delivery(db, delivery_id: str) -> Delivery:
    with session_scope(db.engine) as session:
        row = session.get(Delivery, delivery_id)
    assert row is not None
    return row


def flow(api, *steps: dict, trigger: dict | None = None) -> str:
    body = {
        "name": "Post-purchase",
        "trigger": trigger or {"type": "metric", "metric": "Placed Order"},
        "steps": list(steps),
    }
    return ok(api.post("/v1/flows", json=body), 201)["id"]


def email_step(step_id: str, body: str, **fields) -> dict:
    return {
        "id": step_id,
        "type": "message",
        "channel": "email",
        "content": {"subject": "Your order", "body": body, "sender": SHOP},
        **fields,
    }


# ---- over SMTP ----------------------------------------------------------------------------------


def test_a_test_send_to_a_raw_address_goes_out_over_smtp_marked_test(database, db, keys):
    with smtp_sink() as sink, smtp_api(database, keys, sink) as api:
        campaign, message = campaign_message(api)
        sent = ok(post_test_send(api, campaign, message, to="Ops@Example.com"))

        assert (sent["status"], sent["provider"], sent["to"]) == ("sent", "smtp", "ops@example.com")
        assert sent["test"] is True and sent["provider_message_id"]
        [received] = sink.received
        assert received.rcpt_tos == ["ops@example.com"]
        email = received.message
        assert email["Subject"] == "Hi there"  # rendered for nobody: the defaults show
        assert email["From"] == SHOP
        assert email["X-Herald-Delivery-Id"] == sent["id"]
        text = email.get_body(("plain",)).get_content()
        html = email.get_body(("html",)).get_content()
        assert "Hi there, the drop is live." in text and "Shop now (https://shop.test/drop)" in text
        assert "<p>Hi there, the drop is live.</p>" in html

        row = delivery(db, sent["id"])
        assert row.test is True
        assert row.idempotency_key == f"test:{sent['id']}"
        assert (row.run_kind, row.run_id, row.step_id) == ("campaign", campaign, message)
        assert (row.status, row.to_address, row.profile_id) == ("sent", "ops@example.com", "")

        # Counted nowhere: not in the report, and nothing was sent as far as reverting a
        # scheduled campaign to a draft is concerned.
        report = ok(api.get(f"/v1/campaigns/{campaign}/report"))
        assert (report["sent"], report["failed"], report["sending"]) == (0, 0, 0)
        with session_scope(db.engine) as session:
            assert not anything_sent(session, load_campaign(session, campaign))


def test_a_test_send_with_a_profile_and_an_address_is_personalised_and_sent_there(
    database, db, keys
):
    with smtp_sink() as sink, smtp_api(database, keys, sink) as api:
        ada = profile(api)
        campaign, message = campaign_message(api)
        sent = ok(post_test_send(api, campaign, message, profile_id=ada, to="ops@example.com"))

        [received] = sink.received
        assert received.rcpt_tos == ["ops@example.com"]  # not Ada's address
        assert received.message["Subject"] == "Hi Ada"
        row = delivery(db, sent["id"])
        # The row names whom it was rendered for, so erasing Ada clears it too.
        assert (row.profile_id, row.to_address, row.test) == (ada, "ops@example.com", True)


def test_a_permanent_refusal_is_a_failed_test_delivery_with_the_reason(database, db, keys):
    refused = {"nobody@example.com": "550 5.1.1 <nobody@example.com>: no such user"}
    with smtp_sink(refuse_recipients=refused) as sink, smtp_api(database, keys, sink) as api:
        campaign, message = campaign_message(api)
        answer = ok(post_test_send(api, campaign, message, to="nobody@example.com"))

        assert (answer["status"], answer["reason"]) == ("failed", "recipient_refused")
        row = delivery(db, answer["id"])
        assert (row.status, row.reason, row.test) == ("failed", "recipient_refused", True)
        assert sink.received == []


def test_a_provider_that_cannot_take_it_now_is_503_and_leaves_no_row(database, db, keys):
    deferred = {"ops@example.com": "450 4.2.1 mailbox busy, try later"}
    with smtp_sink(refuse_recipients=deferred) as sink, smtp_api(database, keys, sink) as api:
        campaign, message = campaign_message(api)
        response = post_test_send(api, campaign, message, to="ops@example.com")

        assert response.status_code == 503, response.text
        assert response.json()["code"] == "provider_unavailable"
        assert "mailbox busy" in response.json()["message"]
        assert db.scalar("SELECT count(*) FROM delivery") == 0


def test_a_relay_refusing_the_sender_is_502_misconfigured(database, db, keys):
    refused = {SHOP: "550 5.7.1 sender not allowed"}
    with smtp_sink(refuse_senders=refused) as sink, smtp_api(database, keys, sink) as api:
        campaign, message = campaign_message(api)
        response = post_test_send(api, campaign, message, to="ops@example.com")

        assert response.status_code == 502, response.text
        body = response.json()
        assert body["code"] == "provider_misconfigured" and "sender not allowed" in body["message"]
        assert db.scalar("SELECT count(*) FROM delivery") == 0


# ---- through the outbox -------------------------------------------------------------------------


def test_a_test_send_to_a_profile_skips_consent_and_leaves_smart_sending_and_caps_alone(
    api, db, account
):
    # Ada never subscribed: a test send goes to the operator's own test profile regardless.
    ada = profile(api)
    campaign, message = campaign_message(api)
    sent = ok(post_test_send(api, campaign, message, profile_id=ada))

    assert (sent["status"], sent["provider"], sent["to"]) == ("sent", "outbox", "ada@example.com")
    [outbox] = ok(api.get("/v1/outbox", params={"delivery_id": sent["id"]}))["data"]
    assert outbox["subject"] == "Hi Ada" and "Hi Ada, the drop is live." in outbox["body"]
    assert str(outbox["id"]) == sent["provider_message_id"]
    [listed] = ok(api.get("/v1/deliveries", params={"profile_id": ada}))["data"]
    assert (listed["id"], listed["test"], listed["status"]) == (sent["id"], True, "sent")
    assert ok(api.get(f"/v1/campaigns/{campaign}/report"))["sent"] == 0

    # The real send right after is neither skipped for smart sending nor capped.
    account(frequency_caps={"email": {"per_day": 1}})
    ok(api.put(f"/v1/profiles/{ada}/consent/email", json={"status": "subscribed"}))
    request = DeliveryRequest(
        idempotency_key=f"campaign:{campaign}:{message}:{ada}",
        run_kind="campaign",
        run_id=campaign,
        step_id=message,
        profile_id=ada,
        channel="email",
        content={"subject": GREETING, "body": HTML, "sender": SHOP},
        smart_sending=True,
    )
    now = datetime.now(UTC)
    real = DeliveryActivities(db.engine, Settings(), clock=lambda: now).deliver(request)
    assert (real.status, real.reason) == ("sent", None)
    report = ok(api.get(f"/v1/campaigns/{campaign}/report"))
    assert (report["sent"], report["skipped"]) == (1, {})


def test_an_sms_test_send_records_its_segments(api, db):
    ada = profile(api, phone="+31612345678")
    campaign, message = campaign_message(api, channel="sms", body="x" * 161)
    sent = ok(post_test_send(api, campaign, message, profile_id=ada))
    assert sent["to"] == "+31612345678"
    assert delivery(db, sent["id"]).segments == 2


def test_a_flow_step_test_send_renders_the_sample_event_and_counts_in_no_result(api, db):
    ada = profile(api)
    body = "Order {{ event.properties.order_id }} from {{ flow.name }}: "
    body += "thanks {{ profile.first_name }}!"
    flow_id = flow(api, email_step("thanks", body, transactional=True))
    url = f"/v1/flows/{flow_id}/messages/thanks/test-send"
    sent = ok(api.post(url, json={"profile_id": ada, "event": {"properties": {"order_id": 1042}}}))

    [outbox] = ok(api.get("/v1/outbox", params={"delivery_id": sent["id"]}))["data"]
    assert outbox["body"] == "Order 1042 from Post-purchase: thanks Ada!"
    row = delivery(db, sent["id"])
    assert (row.run_kind, row.run_id, row.step_id, row.test) == ("flow", flow_id, "thanks", True)
    assert row.transactional is True and row.workflow_id is None

    # The operator opening it is no engagement of Ada's journey.
    opened = RoutedItem(
        outbox_id=1,
        kind=OutboxKind.event,
        profile_id=ada,
        backfill=False,
        event_id=1,
        metric="Opened Email",
        time=datetime.now(UTC),
        properties={"$delivery_id": sent["id"]},
    )
    with session_scope(db.engine) as session:
        assert record_engagement(session, [opened]) == set()

    [step] = ok(api.get(f"/v1/flows/{flow_id}/report"))["steps"]
    assert step["deliveries"] == {}
    [result] = ok(api.get(f"/v1/flows/{flow_id}/results"))["steps"]
    assert (result["processed"], result["opened"]) == (0, 0)


def test_a_flow_test_send_uses_the_current_version(api, db):
    flow_id = flow(api, email_step("thanks", "Version one"))
    definition = {
        "trigger": {"type": "metric", "metric": "Placed Order"},
        "steps": [email_step("thanks", "Version two")],
    }
    ok(api.put(f"/v1/flows/{flow_id}/definition", json=definition))
    with session_scope(db.engine) as session:
        assert session.get(FlowVersion, (flow_id, 2)) is not None
    url = f"/v1/flows/{flow_id}/messages/thanks/test-send"
    sent = ok(api.post(url, json={"to": "ops@example.com"}))
    [outbox] = ok(api.get("/v1/outbox", params={"delivery_id": sent["id"]}))["data"]
    assert outbox["body"] == "Version two"


# ---- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_refused_naming_the_field_and_sends_nothing(api, db):
    ada = profile(api)
    nameless = profile(api, email=None, phone="+31612345678", first_name=None)
    campaign, message = campaign_message(api)

    assert "profile_id" in errors(post_test_send(api, campaign, message))
    assert "no profile 'pr_missing'" in errors(
        post_test_send(api, campaign, message, profile_id="pr_missing")
    ).get("profile_id", "")
    assert (
        "email address"
        in errors(post_test_send(api, campaign, message, profile_id=nameless))["profile_id"]
    )
    assert (
        "not a valid email address"
        in errors(post_test_send(api, campaign, message, to="ada@"))["to"]
    )
    assert "event" in errors(post_test_send(api, campaign, message, to="a@b.co", event={}))

    missing = post_test_send(api, campaign, "msg_missing", profile_id=ada)
    assert missing.status_code == 404 and "message 'msg_missing'" in missing.json()["message"]
    missing = post_test_send(api, "cmp_missing", message, profile_id=ada)
    assert missing.status_code == 404 and "campaign 'cmp_missing'" in missing.json()["message"]
    assert db.scalar("SELECT count(*) FROM delivery") == 0


def test_a_flow_test_send_names_a_missing_flow_or_step_and_refuses_other_steps(api, db):
    wait = {"id": "wait", "type": "time_delay", "amount": 1, "unit": "days", "next": "thanks"}
    flow_id = flow(api, wait, email_step("thanks", "Hi"))
    to = {"to": "ops@example.com"}

    response = api.post(f"/v1/flows/{flow_id}/messages/nope/test-send", json=to)
    assert response.status_code == 404 and "step 'nope'" in response.json()["message"]
    response = api.post("/v1/flows/flw_missing/messages/thanks/test-send", json=to)
    assert response.status_code == 404 and "flow 'flw_missing'" in response.json()["message"]
    refused = errors(api.post(f"/v1/flows/{flow_id}/messages/wait/test-send", json=to))
    assert "time_delay step, not a message" in refused["step_id"]
    assert db.scalar("SELECT count(*) FROM delivery") == 0


def test_a_template_error_is_422_with_the_field_line_and_column(api, db):
    campaign, message = campaign_message(
        api, subject="Hi", body="Hello\n  {{ profile.first_name | shout }}", sender=SHOP
    )
    response = post_test_send(api, campaign, message, to="ops@example.com")
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["line"], error["column"]) == ("content.body", 2, 27)
    assert "unknown filter 'shout'" in error["reason"]
    assert db.scalar("SELECT count(*) FROM delivery") == 0
