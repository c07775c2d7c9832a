"""The shared `deliver` activity: one delivery per key, every skip reason, smart sending, caps,
quiet hours, templates, and email over a real SMTP server (aiosmtpd)."""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.delivery as delivery_module
from activities.delivery import DeliveryActivities
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.delivery.policy import parse_clock, quiet_hours_end
from herald.delivery.send_path import PROVIDER_UNAVAILABLE
from herald.flows.conditions import ConditionUnavailable
from herald.flows.graph import MessageContent
from herald.profiles.consent import set_consent
from models.account import Account
from models.delivery import Delivery
from models.delivery_dto import DeliveryRequest, DeliveryResult
from models.enums import Channel, ConsentStatus
from models.flows import Flow, FlowEnrollment
from models.profile import Profile
from tests.conftest import free_port

NOON = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
EMAIL = {"subject": "Hi {{ profile.first_name }}", "body": "Hello {{ profile.first_name }}"}
TEXT = {"body": "Hello {{ profile.first_name }}"}


# ---- the world ----------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime = NOON):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


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

    configure(
        timezone="UTC",
        enabled_channels=["email", "sms", "whatsapp", "push"],
        smart_sending_hours={"email": 16, "sms": 24, "whatsapp": 24, "push": 24},
        quiet_hours_start="21:00",
        quiet_hours_end="08:00",
        frequency_caps={},
    )
    yield configure
    configure(**{k: v for k, v in before.items() if k != "id"})


@pytest.fixture
def deliver(db, account, clock):
    return DeliveryActivities(db.engine, Settings(), clock=clock).deliver


def make_profile(
    db,
    email: str | None = "ada@example.com",
    phone: str | None = None,
    timezone: str | None = None,
    consent: tuple[str, ...] = ("email",),
    first_name: str | None = "Ada",
    **properties: Any,
) -> str:
    with session_scope(db.engine) as session:
        profile = Profile(
            id=new_id("pr"),
            email=email,
            phone=phone,
            timezone=timezone,
            first_name=first_name,
            properties=properties,
        )
        session.add(profile)
        session.flush()
        for channel in consent:
            set_consent(session, profile, Channel(channel), ConsentStatus.subscribed, "test")
        return profile.id


def campaign(profile_id: str, message: str = "m1", channel: str = "email", **fields: Any):
    content = fields.pop("content", EMAIL if channel == "email" else TEXT)
    return DeliveryRequest(
        idempotency_key=f"campaign:cp_1:{message}:{profile_id}",
        run_kind="campaign",
        run_id="cp_1",
        step_id=message,
        profile_id=profile_id,
        channel=channel,
        content=MessageContent(**content),
        **fields,
    )


def enroll(db, profile_id: str, status: str = "running", exit_reason: str | None = None) -> str:
    flow_id = new_id("fl")
    workflow_id = f"flow/{flow_id}/{profile_id}/e1"
    with session_scope(db.engine) as session:
        session.add(Flow(id=flow_id, name="Welcome", trigger_type="metric", trigger_key="Joined"))
        session.flush()
        session.add(
            FlowEnrollment(
                workflow_id=workflow_id,
                flow_id=flow_id,
                version=1,
                profile_id=profile_id,
                entry_key="e1",
                status=status,
                exit_reason=exit_reason,
            )
        )
    return workflow_id


def flow_message(workflow_id: str, profile_id: str, step: str = "email_1") -> DeliveryRequest:
    return DeliveryRequest(
        idempotency_key=f"flow:{workflow_id}:{step}",
        run_kind="flow",
        run_id=workflow_id.split("/")[1],
        step_id=step,
        workflow_id=workflow_id,
        profile_id=profile_id,
        channel="email",
        content=MessageContent(**EMAIL),
    )


def sent_before(db, profile_id: str, channel: str, at: datetime, transactional=False) -> None:
    """A delivery sent earlier (by another run), as smart sending and caps see it."""
    with session_scope(db.engine) as session:
        session.add(
            Delivery(
                id=new_id("dl"),
                idempotency_key=new_id("earlier"),
                run_kind="campaign",
                run_id="cp_0",
                step_id="m0",
                profile_id=profile_id,
                channel=channel,
                status="sent",
                transactional=transactional,
                sent_at=at,
            )
        )


def deliveries(db, profile_id: str | None = None) -> list:
    sql = "SELECT status, reason, channel, provider, to_address, subject FROM delivery"
    if profile_id is not None:
        return db.rows(sql + " WHERE profile_id = :p AND run_id <> 'cp_0'", p=profile_id)
    return db.rows(sql + " WHERE run_id <> 'cp_0'")


def outbox(db) -> list:
    return db.rows(
        "SELECT delivery_id, profile_id, channel, to_address, subject, body, tracking"
        " FROM message_outbox ORDER BY id"
    )


def skipped(reason: str) -> tuple:
    return ("skipped", reason)


def outcome(result: DeliveryResult) -> tuple:
    return (result.status, result.reason)


# ---- exactly one delivery per key ---------------------------------------------------------------


def test_a_message_goes_to_the_outbox_with_its_delivery_in_one_row_each(db, deliver):
    ada = make_profile(db)
    result = deliver(campaign(ada))
    assert result.status == "sent" and result.delivery_id.startswith("dl_")
    assert deliveries(db) == [("sent", None, "email", "outbox", "ada@example.com", "Hi Ada")]
    [(delivery_id, profile_id, channel, to, subject, body, tracking)] = outbox(db)
    assert (delivery_id, profile_id, channel, to, subject, body) == (
        result.delivery_id,
        ada,
        "email",
        "ada@example.com",
        "Hi Ada",
        "Hello Ada",
    )
    tracking = tracking if isinstance(tracking, dict) else json.loads(tracking)  # SQLite: text
    assert tracking == {
        "$delivery_id": result.delivery_id,
        "run_kind": "campaign",
        "run_id": "cp_1",
        "step_id": "m1",
    }
    assert db.scalar("SELECT provider_message_id FROM delivery") is not None


def test_repeated_calls_with_one_key_deliver_once_and_return_the_first_result(db, deliver, clock):
    ada = make_profile(db)
    first = deliver(campaign(ada))
    clock.now += timedelta(days=3)  # a retry much later still finds the first outcome
    assert [deliver(campaign(ada)) for _ in range(3)] == [first] * 3
    assert len(deliveries(db)) == 1 and len(outbox(db)) == 1


def test_a_recorded_skip_is_returned_on_retry_even_after_the_reason_went_away(db, deliver):
    ada = make_profile(db, consent=())
    first = deliver(campaign(ada))
    assert outcome(first) == skipped("no_consent")
    with session_scope(db.engine) as session:
        set_consent(
            session, session.get(Profile, ada), Channel.email, ConsentStatus.subscribed, "t"
        )
    assert deliver(campaign(ada)) == first
    assert len(deliveries(db)) == 1 and outbox(db) == []


def test_concurrent_attempts_with_one_key_deliver_once(db, deliver):
    ada = make_profile(db)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: deliver(campaign(ada)), range(8)))
    assert {r.delivery_id for r in results} == {results[0].delivery_id}
    assert all(r.status == "sent" for r in results)
    assert len(deliveries(db)) == 1 and len(outbox(db)) == 1


def test_losing_the_race_for_the_key_returns_the_winners_result(db, deliver, monkeypatch):
    ada = make_profile(db)
    winner = deliver(campaign(ada))
    real = delivery_module.recorded_row
    calls = []

    def checked_before_the_winner_committed(session, key):
        calls.append(key)
        return None if len(calls) == 1 else real(session, key)

    monkeypatch.setattr(delivery_module, "recorded_row", checked_before_the_winner_committed)
    # The unique constraint stops the second insert; the loser reads and returns the winner's.
    assert deliver(campaign(ada)) == winner
    assert len(calls) == 2
    assert len(deliveries(db)) == 1 and len(outbox(db)) == 1


def test_runs_as_a_temporal_activity(db, deliver):
    ada = make_profile(db)
    result = ActivityEnvironment().run(deliver, campaign(ada))
    assert result.status == "sent"


# ---- skip reasons, in order ---------------------------------------------------------------------


def test_flow_message_after_exit_is_skipped_as_exited(db, deliver):
    ada = make_profile(db)
    converted = enroll(db, ada, status="exited", exit_reason="converted")
    marked = enroll(db, ada, status="running", exit_reason="converted")  # row marked first
    completed = enroll(db, ada, status="completed")
    running = enroll(db, ada)
    for workflow_id in (converted, marked, completed, "flow/fl_gone/x/e1"):
        assert outcome(deliver(flow_message(workflow_id, ada))) == skipped("exited"), workflow_id
    assert deliver(flow_message(running, ada)).status == "sent"
    assert len(outbox(db)) == 1


def test_campaign_exit_hook_skips_as_exited(db, deliver, monkeypatch):
    ada = make_profile(db)
    monkeypatch.setattr(delivery_module, "campaign_exited", lambda session, request: True)
    assert outcome(deliver(campaign(ada))) == skipped("exited")


def test_disabled_channel_is_skipped(db, deliver, account):
    account(enabled_channels=["email"])
    ada = make_profile(db, phone="+31612345678", consent=("email", "sms"))
    assert outcome(deliver(campaign(ada, channel="sms"))) == skipped("channel_disabled")
    assert deliver(campaign(ada, message="m2")).status == "sent"


def test_unknown_profile_is_skipped_as_deleted_without_raising(db, deliver):
    assert outcome(deliver(campaign("pr_gone"))) == skipped("profile_deleted")
    assert db.scalar("SELECT profile_id FROM delivery") == "pr_gone"


def test_missing_address_is_skipped(db, deliver):
    ada = make_profile(db)  # no phone
    assert outcome(deliver(campaign(ada, channel="sms"))) == skipped("missing_address")
    assert outcome(deliver(campaign(ada, channel="push"))) == skipped("missing_address")


def test_without_consent_on_the_channel_it_is_skipped(db, deliver):
    never = make_profile(db, email="never@example.com", consent=())
    gone = make_profile(db, email="gone@example.com")
    with session_scope(db.engine) as session:
        profile = session.get(Profile, gone)
        set_consent(session, profile, Channel.email, ConsentStatus.unsubscribed, "link")
    texts_only = make_profile(db, email="sms@example.com", phone="+31611111111", consent=("sms",))
    assert outcome(deliver(campaign(never))) == skipped("no_consent")
    assert outcome(deliver(campaign(gone))) == skipped("no_consent")
    assert outcome(deliver(campaign(texts_only))) == skipped("no_consent")
    assert outbox(db) == []


def test_filters_are_rechecked_at_send_time(db, deliver):
    vip = make_profile(db, email="vip@example.com", vip=True)
    regular = make_profile(db, email="reg@example.com", vip=False)
    only_vips = [{"type": "property", "property": "vip", "operator": "equals", "value": True}]
    assert deliver(campaign(vip, filters=only_vips)).status == "sent"
    assert outcome(deliver(campaign(regular, filters=only_vips))) == skipped("filter")


def test_a_condition_the_installation_cannot_evaluate_fails_without_retrying(
    db, deliver, monkeypatch
):
    def unavailable(session, profile_id, conditions, now):
        raise ConditionUnavailable("a condition this installation cannot evaluate")

    monkeypatch.setattr(delivery_module, "profile_matches", unavailable)
    ada = make_profile(db)
    in_segment = [{"type": "in_segment", "segment_id": "sg_1"}]
    with pytest.raises(ApplicationError) as raised:
        deliver(campaign(ada, filters=in_segment))
    assert raised.value.non_retryable
    assert deliveries(db) == []


def test_segment_membership_is_rechecked_before_the_send(db, deliver):
    from herald.segments.store import create_segment
    from models.types import utcnow

    ada = make_profile(db)
    definition = {
        "all_of": [{"any_of": [{"type": "property", "property": "vip", "operator": "is_set"}]}]
    }
    with session_scope(db.engine) as session:
        segment = create_segment(session, name="VIP", definition=definition, now=utcnow())
        session.get(Profile, ada).properties = {"vip": "gold"}
    assert deliver(campaign(ada, segment_id=segment.id)).status == "sent"
    with session_scope(db.engine) as session:
        session.get(Profile, ada).properties = {}
    assert outcome(deliver(campaign(ada, message="m2", segment_id=segment.id))) == skipped(
        "segment"
    )
    # A segment deleted meanwhile holds nobody.
    assert outcome(deliver(campaign(ada, message="m3", segment_id="seg_gone"))) == skipped(
        "segment"
    )


def test_skip_reasons_apply_in_order(db, deliver, account):
    account(enabled_channels=["email"])
    ada = make_profile(db, consent=())
    gone = enroll(db, ada, status="exited", exit_reason="converted")
    # Exited beats everything; then a disabled channel beats a missing address and consent.
    assert outcome(deliver(flow_message(gone, ada))) == skipped("exited")
    assert outcome(deliver(campaign(ada, channel="sms"))) == skipped("channel_disabled")
    assert outcome(deliver(campaign(ada, message="m2"))) == skipped("no_consent")


def test_flow_request_without_its_workflow_id_is_a_non_retryable_error(db, deliver):
    ada = make_profile(db)
    request = flow_message("flow/fl_1/x/e1", ada).model_copy(update={"workflow_id": None})
    with pytest.raises(ApplicationError) as raised:
        deliver(request)
    assert raised.value.non_retryable


# ---- smart sending and frequency caps -----------------------------------------------------------


def test_smart_sending_skips_within_the_window_and_sends_after_it(db, deliver, clock):
    recent = make_profile(db, email="recent@example.com")
    earlier = make_profile(db, email="earlier@example.com")
    sent_before(db, recent, "email", NOON - timedelta(hours=15))
    sent_before(db, earlier, "email", NOON - timedelta(hours=17))
    assert outcome(deliver(campaign(recent))) == skipped("smart_sending")
    assert deliver(campaign(earlier)).status == "sent"


def test_smart_sending_counts_only_the_same_channel_and_can_be_turned_off(db, deliver):
    ada = make_profile(db, phone="+31612345678", consent=("email", "sms"))
    sent_before(db, ada, "sms", NOON - timedelta(hours=1))
    assert deliver(campaign(ada)).status == "sent"  # email after an SMS
    assert outcome(deliver(campaign(ada, message="m2"))) == skipped("smart_sending")
    assert deliver(campaign(ada, message="m3", smart_sending=False)).status == "sent"


def test_smart_sending_windows_are_per_channel_account_settings(db, deliver, account):
    ada = make_profile(db, phone="+31612345678", consent=("sms",))
    sent_before(db, ada, "sms", NOON - timedelta(hours=20))
    assert outcome(deliver(campaign(ada, channel="sms"))) == skipped("smart_sending")  # 24 h
    account(smart_sending_hours={"email": 16, "sms": 12, "whatsapp": 24, "push": 24})
    assert deliver(campaign(ada, message="m2", channel="sms")).status == "sent"


def test_daily_cap_skips_as_capped_but_not_transactional_messages(db, deliver, account):
    account(frequency_caps={"email": {"per_day": 2, "per_week": 10}})
    ada = make_profile(db)
    sent_before(db, ada, "email", NOON - timedelta(hours=20))
    assert deliver(campaign(ada, smart_sending=False)).status == "sent"  # second today
    capped = deliver(campaign(ada, message="m2", smart_sending=False))
    assert outcome(capped) == skipped("capped")
    receipt = campaign(ada, message="receipt", smart_sending=False, transactional=True)
    assert deliver(receipt).status == "sent"


def test_weekly_cap_counts_a_rolling_seven_days(db, deliver, account):
    account(frequency_caps={"email": {"per_week": 3}})
    ada = make_profile(db, email="ada@example.com")
    grace = make_profile(db, email="grace@example.com")
    for days in (2, 4, 6):
        sent_before(db, ada, "email", NOON - timedelta(days=days))
    for days in (2, 4, 8):  # one of them fell out of the week
        sent_before(db, grace, "email", NOON - timedelta(days=days))
    assert outcome(deliver(campaign(ada))) == skipped("capped")
    assert deliver(campaign(grace)).status == "sent"


def test_caps_apply_per_channel(db, deliver, account):
    account(frequency_caps={"sms": {"per_day": 1}})
    ada = make_profile(db, phone="+31612345678", consent=("email", "sms"))
    sent_before(db, ada, "email", NOON - timedelta(hours=20))
    sent_before(db, ada, "sms", NOON - timedelta(hours=30))
    assert deliver(campaign(ada)).status == "sent"
    assert deliver(campaign(ada, message="m2", channel="sms")).status == "sent"
    assert outcome(deliver(campaign(ada, message="m3", channel="sms", smart_sending=False))) == (
        skipped("capped")
    )


# ---- quiet hours --------------------------------------------------------------------------------


def amsterdam(*args: int) -> datetime:
    return datetime(*args, tzinfo=AMSTERDAM).astimezone(UTC)


def texter(db, timezone: str | None = "Europe/Amsterdam") -> str:
    return make_profile(db, phone="+31612345678", timezone=timezone, consent=("sms", "whatsapp"))


@pytest.mark.parametrize(
    ("local_now", "hold_until_utc"),
    [
        # Winter (CET, UTC+1): 22:30 is held until 08:00 the next morning.
        ((2026, 1, 14, 22, 30), datetime(2026, 1, 15, 7, 0, tzinfo=UTC)),
        # After midnight: until 08:00 the same day.
        ((2026, 1, 15, 3, 0), datetime(2026, 1, 15, 7, 0, tzinfo=UTC)),
        # Clocks go forward in the night (CET to CEST): 08:00 local is 06:00 UTC.
        ((2026, 3, 28, 22, 30), datetime(2026, 3, 29, 6, 0, tzinfo=UTC)),
        # Clocks go back in the night (CEST to CET): 08:00 local is 07:00 UTC.
        ((2026, 10, 24, 22, 30), datetime(2026, 10, 25, 7, 0, tzinfo=UTC)),
    ],
)
def test_sms_in_quiet_hours_is_held_until_they_end_and_nothing_is_recorded(
    db, deliver, clock, local_now, hold_until_utc
):
    ada = texter(db)
    clock.now = amsterdam(*local_now)
    held = deliver(campaign(ada, channel="sms"))
    assert held == DeliveryResult(status="held", hold_until=hold_until_utc)
    assert held.hold_until.tzinfo is not None
    assert deliveries(db) == [] and outbox(db) == []
    # The workflow sleeps until then and asks again with the same key.
    clock.now = held.hold_until
    assert deliver(campaign(ada, channel="sms")).status == "sent"
    assert len(outbox(db)) == 1


def test_quiet_hours_hold_whatsapp_but_not_email_or_push(db, deliver, clock):
    ada = make_profile(
        db, phone="+31612345678", timezone="Europe/Amsterdam", consent=("email", "whatsapp")
    )
    clock.now = amsterdam(2026, 1, 14, 23, 0)
    assert deliver(campaign(ada, channel="whatsapp")).status == "held"
    assert deliver(campaign(ada, message="m2")).status == "sent"


def test_outside_quiet_hours_texts_are_sent(db, deliver, clock):
    ada = texter(db)
    clock.now = amsterdam(2026, 1, 14, 20, 59)
    assert deliver(campaign(ada, channel="sms")).status == "sent"
    clock.now = amsterdam(2026, 1, 15, 8, 0)  # the end of the window is outside it
    assert deliver(campaign(ada, message="m2", channel="sms", smart_sending=False)).status == "sent"


def test_profiles_without_a_known_timezone_use_the_accounts(db, deliver, clock, account):
    account(timezone="America/New_York")
    unknown = texter(db, timezone=None)
    clock.now = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)  # 22:00 in New York
    held = deliver(campaign(unknown, channel="sms"))
    assert held.hold_until == datetime(2026, 1, 15, 13, 0, tzinfo=UTC)  # 08:00 EST


def test_quiet_hours_follow_the_account_window(db, deliver, clock, account):
    account(quiet_hours_start="12:00", quiet_hours_end="13:30")  # a window inside one day
    ada = texter(db, timezone="UTC")
    assert deliver(campaign(ada, channel="sms")).hold_until == NOON.replace(hour=13, minute=30)
    account(quiet_hours_start="00:00", quiet_hours_end="00:00")  # no quiet hours
    assert deliver(campaign(ada, channel="sms")).status == "sent"


def test_quiet_hours_end_is_none_outside_the_window():
    start, end = parse_clock("21:00"), parse_clock("08:00")
    assert quiet_hours_end(amsterdam(2026, 6, 1, 12, 0), AMSTERDAM, start, end) is None
    assert quiet_hours_end(amsterdam(2026, 6, 1, 21, 0), AMSTERDAM, start, end) == amsterdam(
        2026, 6, 2, 8, 0
    )


# ---- templates ----------------------------------------------------------------------------------


def test_templates_render_profile_event_and_defaults(db, deliver):
    ada = make_profile(db, first_name=None, rfm_group="At Risk")
    content = {
        "subject": "{{ event.properties.item }} is waiting, {{ profile.first_name | default: "
        "'friend' }}",
        "body": "{% if profile.rfm_group == 'At Risk' %}10% off. {% endif %}"
        "Total {{ event.value }} in {{ flow.name }}{{ event.missing }}",
    }
    context = {"event": {"value": 42.5, "properties": {"item": "Runner X"}}, "flow": {"name": "C"}}
    assert deliver(campaign(ada, content=content, context=context)).status == "sent"
    [row] = outbox(db)
    assert (row.subject, row.body) == ("Runner X is waiting, friend", "10% off. Total 42.5 in C")


def test_a_subject_never_carries_line_breaks(db, deliver):
    ada = make_profile(db, first_name="Ada\r\nBcc: x@evil.example")
    deliver(campaign(ada))
    assert outbox(db)[0].subject == "Hi Ada Bcc: x@evil.example"


def test_template_error_is_recorded_as_failed_and_nothing_is_sent(db, deliver):
    ada = make_profile(db)
    broken = {"subject": "ok", "body": "{{ 1 | divided_by: 0 }}"}
    result = deliver(campaign(ada, content=broken))
    assert outcome(result) == ("failed", "template_error")
    assert deliver(campaign(ada, content=broken)) == result
    assert deliveries(db) == [("failed", "template_error", "email", None, None, None)]
    assert outbox(db) == []


# ---- email over SMTP ----------------------------------------------------------------------------


@dataclass
class SmtpSink:
    """An SMTP server that records what it accepts; some recipients it refuses or defers."""

    messages: list[Any] = field(default_factory=list)
    rcpt_attempts: list[str] = field(default_factory=list)
    deferred: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        self.rcpt_attempts.append(address)
        if address.startswith("reject@"):
            return "550 5.1.1 no such user"
        if address in self.deferred:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        from email import message_from_bytes, policy

        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


def smtp_deliver(db, clock, port: int):
    settings = Settings(
        email_provider="smtp",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_sender="shop@herald.test",
        smtp_timeout_seconds=5,
    )
    return DeliveryActivities(db.engine, settings, clock=clock).deliver


def test_email_over_smtp_reaches_the_server_once_with_its_delivery_id(db, account, clock, smtp):
    sink, port = smtp
    deliver = smtp_deliver(db, clock, port)
    ada = make_profile(db)
    result = deliver(campaign(ada))
    assert deliver(campaign(ada)) == result
    [message] = sink.messages
    assert message["To"] == "ada@example.com" and message["From"] == "shop@herald.test"
    assert message["Subject"] == "Hi Ada"
    assert message["X-Herald-Delivery-Id"] == result.delivery_id
    assert message.get_content().strip() == "Hello Ada"
    assert deliveries(db) == [("sent", None, "email", "smtp", "ada@example.com", "Hi Ada")]
    assert db.scalar("SELECT provider_message_id FROM delivery") == message["Message-ID"]
    assert outbox(db) == []  # SMTP replaces the outbox for email only


def test_smtp_message_id_is_the_same_on_every_attempt_at_one_key(db, account, clock, smtp):
    sink, port = smtp
    ada = make_profile(db)
    smtp_deliver(db, clock, port)(campaign(ada))
    db.clear()  # as if the commit after the server's accept was lost
    ada_again = make_profile(db)
    request = campaign(ada_again).model_copy(
        update={"idempotency_key": campaign(ada).idempotency_key}
    )
    smtp_deliver(db, clock, port)(request)
    first, second = sink.messages
    assert first["Message-ID"] == second["Message-ID"]
    assert first["X-Herald-Delivery-Id"] != second["X-Herald-Delivery-Id"]


def test_smtp_permanent_rejection_is_recorded_as_failed_and_not_retried(db, account, clock, smtp):
    sink, port = smtp
    deliver = smtp_deliver(db, clock, port)
    nobody = make_profile(db, email="reject@example.com")
    result = deliver(campaign(nobody))
    assert outcome(result) == ("failed", "recipient_refused")
    assert deliver(campaign(nobody)) == result
    assert sink.rcpt_attempts == ["reject@example.com"]
    assert sink.messages == []
    assert deliveries(db) == [
        ("failed", "recipient_refused", "email", "smtp", "reject@example.com", "Hi Ada")
    ]


def test_smtp_deferral_raises_for_retry_and_records_nothing(db, account, clock, smtp):
    sink, port = smtp
    deliver = smtp_deliver(db, clock, port)
    ada = make_profile(db)
    sink.deferred.add("ada@example.com")
    with pytest.raises(ApplicationError) as raised:
        deliver(campaign(ada))
    assert raised.value.type == PROVIDER_UNAVAILABLE
    assert deliveries(db) == []
    sink.deferred.clear()  # the server recovers; Temporal's retry sends it
    assert deliver(campaign(ada)).status == "sent"
    assert len(sink.messages) == 1


def test_smtp_server_down_raises_for_retry_and_records_nothing(db, account, clock):
    deliver = smtp_deliver(db, clock, free_port())  # nothing listens there
    ada = make_profile(db)
    with pytest.raises(ApplicationError) as raised:
        deliver(campaign(ada))
    assert raised.value.type == PROVIDER_UNAVAILABLE
    assert deliveries(db) == []


def test_with_smtp_other_channels_still_use_the_outbox(db, account, clock):
    deliver = smtp_deliver(db, clock, free_port())
    ada = texter(db, timezone="UTC")
    assert deliver(campaign(ada, channel="sms")).status == "sent"
    assert [r.to_address for r in outbox(db)] == ["+31612345678"]
