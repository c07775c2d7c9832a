"""The send path: claim (committed), call the provider with no transaction open, record; crashes
leave `sending` rows that the retry resolves by the channel's guarantee; transient and
misconfigured providers release their claims for a retry."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.exceptions import ApplicationError

from activities.campaign_pages import PageSender
from activities.campaigns import CampaignActivities, _audience
from activities.delivery import DeliveryActivities
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.delivery.pace import reserve
from herald.delivery.providers.base import (
    OutgoingMessage,
    Provider,
    ProviderLimits,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
)
from herald.delivery.send_path import PROVIDER_MISCONFIGURED, PROVIDER_UNAVAILABLE
from herald.profiles.consent import set_consent
from models.enums import Channel, ConsentStatus
from models.profile import Profile
from models.providers import ChannelProviderSetting
from tests import test_campaign_activities as pages
from tests.test_delivery import Clock, campaign, make_profile, texter
from tests.test_delivery import account as account  # noqa: F401  (fixture)
from tests.test_delivery import clock as clock  # noqa: F401  (fixture)

Answer = SendReceipt | Exception


class ScriptedProvider(Provider):
    """Answers each send with the next scripted answer (a receipt by default), recording what
    it was given; `during_send` runs (in a thread) while a send is on the wire."""

    name = "scripted"

    def __init__(self, *answers: Answer, during_send=None, limits=ProviderLimits()):
        self.answers = list(answers)
        self.sent: list[OutgoingMessage] = []
        self.during_send = during_send
        self.limits = limits

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        if self.during_send is not None:
            await asyncio.wait_for(asyncio.to_thread(self.during_send, message), 10)
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        self.sent.append(message)
        return answer or SendReceipt(provider_message_id=f"pm-{message.delivery_id}")

    async def check(self) -> None:
        return None


def deliver_with(db, clock, provider: Provider, channel: str = "email", wall=None):
    return DeliveryActivities(
        db.engine, Settings(), providers={channel: provider}, clock=clock, wall=wall or clock
    ).deliver


LATER = timedelta(seconds=60)  # past STALE_CLAIM: the claiming attempt is surely gone


def rows(db, key: str | None = None) -> list[Any]:
    sql = "SELECT id, status, reason, provider, provider_message_id, segments FROM delivery"
    if key is not None:
        return db.rows(sql + " WHERE idempotency_key = :k", k=key)
    return db.rows(sql + " ORDER BY id")


# ---- no lock while the provider talks -----------------------------------------------------------


def test_the_claim_is_committed_and_unlocked_while_the_provider_is_called(db, account, clock):
    ada = make_profile(db)
    request = campaign(ada)
    seen: list[str] = []

    def write_from_another_connection(message: OutgoingMessage) -> None:
        # Would wait for the write lock (SQLite) or the row lock (PostgreSQL) if the send held
        # them, and find no row if the claim were not committed yet.
        with db.engine.begin() as conn:
            changed = conn.execute(
                text("UPDATE delivery SET subject = subject WHERE idempotency_key = :k"),
                {"k": message.idempotency_key},
            ).rowcount
            status = conn.execute(
                text("SELECT status FROM delivery WHERE idempotency_key = :k"),
                {"k": message.idempotency_key},
            ).scalar_one()
        assert changed == 1
        seen.append(status)

    provider = ScriptedProvider(during_send=write_from_another_connection)
    result = deliver_with(db, clock, provider)(request)
    assert seen == ["sending"]
    assert result.status == "sent"
    [row] = rows(db, request.idempotency_key)
    assert (row.status, row.provider, row.provider_message_id) == (
        "sent",
        "scripted",
        f"pm-{row.id}",
    )


def test_a_campaign_page_calls_its_provider_after_commit(db, account):
    ids = pages.profiles(db, 5)
    states: list[int] = []

    def write_from_another_connection(message: OutgoingMessage) -> None:
        with db.engine.begin() as conn:
            conn.execute(
                text("UPDATE delivery SET subject = subject WHERE id = :i"),
                {"i": message.delivery_id},
            )
            states.append(
                conn.execute(
                    text("SELECT count(*) FROM delivery WHERE status = 'sending'")
                ).scalar_one()
            )

    provider = ScriptedProvider(during_send=write_from_another_connection)
    acts = CampaignActivities(db.engine, Settings(), providers={"email": provider})
    p = pages.path(pages.make_list(db, *ids))
    req = pages.page_request(pages.campaign(db, [p]), p)
    result = acts.send_page(req)
    assert (result.sent, result.failed) == (5, 0)
    assert states and all(n >= 1 for n in states)  # the claims were visible to another connection
    assert {r.status for r in rows(db)} == {"sent"}
    assert acts.send_page(req) == result  # a retry reports the recorded outcomes
    assert len(provider.sent) == 5


# ---- answers ------------------------------------------------------------------------------------


def test_a_transient_error_releases_the_claim_and_asks_for_a_retry_after(db, account, clock):
    ada = make_profile(db)
    request = campaign(ada)
    provider = ScriptedProvider(ProviderUnavailable("429 too many", retry_after=1))
    deliver = deliver_with(db, clock, provider)
    with pytest.raises(ApplicationError) as raised:
        deliver(request)
    assert raised.value.type == PROVIDER_UNAVAILABLE
    assert raised.value.next_retry_delay == timedelta(seconds=1)
    assert rows(db, request.idempotency_key) == []  # nothing was sent: nothing recorded
    assert deliver(request).status == "sent"
    assert len(provider.sent) == 1


def test_a_recipient_who_said_stop_fails_and_loses_sms_consent(db, account, clock):
    phone = texter(db, timezone="UTC")
    stop = ProviderRejected("recipient_unsubscribed", "21610", provider_code="21610")
    result = deliver_with(db, clock, ScriptedProvider(stop), "sms")(campaign(phone, channel="sms"))
    assert (result.status, result.reason) == ("failed", "recipient_unsubscribed")
    consent = db.rows(
        "SELECT status, source FROM consent WHERE profile_id = :p AND channel = 'sms'", p=phone
    )
    assert [(c.status, c.source) for c in consent] == [("unsubscribed", "provider:21610")]


def test_segments_are_counted_on_sms_rows(db, account, clock):
    phone = texter(db, timezone="UTC")
    long_text = {"body": "x" * 161}
    request = campaign(phone, channel="sms", content=long_text)
    deliver_with(db, clock, ScriptedProvider(), "sms")(request)
    assert [r.segments for r in rows(db, request.idempotency_key)] == [2]


def test_dead_push_tokens_are_removed_from_the_profile(db, account, clock):
    ada = make_profile(db, consent=())
    with session_scope(db.engine) as session:
        session.execute(
            text("UPDATE profile SET push_tokens = :t WHERE id = :p"),
            {"t": '["tok-a", "tok-b"]', "p": ada},
        )
    with session_scope(db.engine) as session:
        set_consent(session, session.get(Profile, ada), Channel.push, ConsentStatus.subscribed, "t")
    provider = ScriptedProvider(SendReceipt("pm-1", dead_tokens=("tok-a",)))
    result = deliver_with(db, clock, provider, "push")(
        campaign(ada, channel="push", content={"subject": "Hi", "body": "Drop"})
    )
    assert result.status == "sent"
    assert provider.sent[0].push_tokens == ("tok-a", "tok-b")
    with session_scope(db.engine) as session:
        assert session.get(Profile, ada).push_tokens == ["tok-b"]


def test_a_misconfigured_provider_is_reported_once_and_sends_nothing(db, account, clock):
    ada = make_profile(db)
    request = campaign(ada)
    with session_scope(db.engine) as session:
        session.add(ChannelProviderSetting(channel="email", provider="smtp", config={}))
    try:
        provider = ScriptedProvider(ProviderMisconfigured("535 authentication failed"))
        deliver = deliver_with(db, clock, provider)
        with pytest.raises(ApplicationError) as raised:
            deliver(request)
        assert raised.value.type == PROVIDER_MISCONFIGURED
        state = db.rows("SELECT state, state_detail FROM channel_provider WHERE channel='email'")
        assert [(s.state, s.state_detail) for s in state] == [
            ("misconfigured", "535 authentication failed")
        ]
        assert rows(db, request.idempotency_key) == []
        assert deliver(request).status == "sent"  # fixed: the retry sends and clears the state
        assert db.scalar("SELECT state FROM channel_provider WHERE channel='email'") == "ok"
    finally:
        db.execute("DELETE FROM channel_provider")


# ---- a worker that died between claim and record ------------------------------------------------


def _claim_only(db, clock, provider, request) -> None:
    """Step 1 of the send path, committed, as a worker that then died would leave it; the
    clock then moves past STALE_CLAIM."""
    acts = DeliveryActivities(db.engine, Settings(), providers={"email": provider}, clock=clock)
    with session_scope(db.engine) as session:
        claimed = acts._claim(session, request, clock(), clock())
    assert isinstance(claimed, tuple)
    clock.now += LATER


def test_a_young_claim_is_left_to_its_attempt(db, account, clock):
    ada = make_profile(db)
    request = campaign(ada)
    provider = ScriptedProvider()
    acts = DeliveryActivities(db.engine, Settings(), providers={"email": provider}, clock=clock)
    with session_scope(db.engine) as session:
        acts._claim(session, request, clock(), clock())
    clock.now += timedelta(seconds=5)  # the claiming attempt may still be sending
    with pytest.raises(ApplicationError) as raised:
        deliver_with(db, clock, provider)(request)
    assert raised.value.type == PROVIDER_UNAVAILABLE
    assert raised.value.next_retry_delay == timedelta(seconds=25)
    assert provider.sent == [] and [r.status for r in rows(db)] == ["sending"]


def test_a_resend_is_re_checked_and_not_sent_to_an_unsubscribed_profile(db, account, clock):
    account(delivery_guarantees={"email": {"marketing": "at_least_once"}})
    ada = make_profile(db)
    request = campaign(ada)
    provider = ScriptedProvider()
    _claim_only(db, clock, provider, request)
    with session_scope(db.engine) as session:
        set_consent(
            session, session.get(Profile, ada), Channel.email, ConsentStatus.unsubscribed, "t"
        )
    result = deliver_with(db, clock, provider)(request)
    assert (result.status, result.reason) == ("unknown", "no_consent")
    assert provider.sent == []


def test_marketing_left_sending_becomes_unknown_and_is_not_resent(db, account, clock):
    ada = make_profile(db)
    request = campaign(ada)
    provider = ScriptedProvider()
    _claim_only(db, clock, provider, request)
    assert [r.status for r in rows(db, request.idempotency_key)] == ["sending"]
    result = deliver_with(db, clock, provider)(request)
    assert result.status == "unknown"
    assert provider.sent == []
    assert [r.status for r in rows(db, request.idempotency_key)] == ["unknown"]
    assert deliver_with(db, clock, provider)(request).status == "unknown"  # stays, listed


def test_transactional_left_sending_is_sent_again_under_the_same_key(db, account, clock):
    ada = make_profile(db)
    request = campaign(ada, transactional=True)
    provider = ScriptedProvider()
    _claim_only(db, clock, provider, request)
    [claimed] = rows(db, request.idempotency_key)
    result = deliver_with(db, clock, provider)(request)
    assert (result.status, result.delivery_id) == ("sent", claimed.id)
    [message] = provider.sent
    assert (message.delivery_id, message.idempotency_key) == (claimed.id, request.idempotency_key)


def test_an_account_can_ask_marketing_email_to_be_resent(db, account, clock):
    account(delivery_guarantees={"email": {"marketing": "at_least_once"}})
    ada = make_profile(db)
    request = campaign(ada)
    provider = ScriptedProvider()
    _claim_only(db, clock, provider, request)
    assert deliver_with(db, clock, provider)(request).status == "sent"
    assert len(provider.sent) == 1


def test_a_claimed_send_counts_for_smart_sending(db, account, clock):
    ada = make_profile(db)
    provider = ScriptedProvider()
    _claim_only(db, clock, provider, campaign(ada, message="m1"))
    second = deliver_with(db, clock, provider)(campaign(ada, message="m2"))
    assert (second.status, second.reason) == ("skipped", "smart_sending")


@pytest.mark.parametrize("guarantee", ["at_most_once", "at_least_once"])
def test_a_campaign_page_resolves_claims_a_dead_attempt_left(db, account, guarantee):
    account(delivery_guarantees={"email": {"marketing": guarantee}})
    ids = pages.profiles(db, 4)
    provider = ScriptedProvider()
    acts = CampaignActivities(db.engine, Settings(), providers={"email": provider})
    p = pages.path(pages.make_list(db, *ids))
    req = pages.page_request(pages.campaign(db, [p]), p)
    message = p.messages[0]
    condition = _audience(db.engine, req.settings, req.path, req.all_paths)
    dead_attempt = datetime.now(UTC) - timedelta(seconds=60)
    with session_scope(db.engine) as session:  # the dead attempt: claimed, never sent
        _, pending = PageSender().send(
            session, req, message, condition, provider, 1000, dead_attempt
        )
    assert len(pending) == 4 and provider.sent == []
    result = acts.send_page(req)
    if guarantee == "at_most_once":
        assert (result.sent, result.unknown) == (0, 4)
        assert provider.sent == []
        assert {r.status for r in rows(db)} == {"unknown"}
    else:
        assert (result.sent, result.unknown) == (4, 0)
        assert sorted(m.delivery_id for m in provider.sent) == sorted(
            m.delivery_id for m in pending
        )
        assert {r.status for r in rows(db)} == {"sent"}


# ---- pacing -------------------------------------------------------------------------------------


def test_reserved_slots_follow_each_other_at_the_providers_rate(db):
    now = Clock()()
    try:
        waits = [reserve(db.engine, "sms", 2, 2.0, now, within=10) for _ in range(3)]
        assert waits == [0.0, 1.0, 2.0]  # 2 messages at 2/s: one second per reservation
        # A slot past the caller's deadline is not taken, and does not push the queue back.
        assert reserve(db.engine, "sms", 2, 2.0, now, within=2.5) is None
        assert reserve(db.engine, "sms", 2, 2.0, now, within=10) == 3.0
        later = now + timedelta(seconds=10)
        assert reserve(db.engine, "sms", 1, 2.0, later, within=10) == 0.0  # idle: no debt
    finally:
        db.execute("DELETE FROM provider_pace")


def test_no_chunk_starts_after_the_budget_and_the_rest_is_released(db, account):
    from herald.delivery.pace import send_paced
    from herald.delivery.provider_hub import ProviderHub

    provider = ScriptedProvider(limits=ProviderLimits(concurrency=2, per_second=2))
    hub = ProviderHub(Settings(), fixed={"sms": provider})
    messages = [
        OutgoingMessage(
            delivery_id=f"dl_{i}",
            idempotency_key=f"k{i}",
            profile_id="p",
            channel=Channel.sms,
            to_address="+31612345678",
            subject=None,
            body="hi",
        )
        for i in range(5)
    ]
    try:
        # 2 per second: the first chunk (2) goes at once, the next slot is a second away.
        outcomes = send_paced(db.engine, hub, provider, "sms", messages, budget=0.6)
    finally:
        hub.close()
        db.execute("DELETE FROM provider_pace")
    assert [type(o).__name__ for o in outcomes] == ["SendReceipt"] * 2 + ["ProviderUnavailable"] * 3
    assert len(provider.sent) == 2


def test_a_page_leaves_a_young_claim_to_its_attempt(db, account):
    ids = pages.profiles(db, 2)
    provider = ScriptedProvider()
    acts = CampaignActivities(db.engine, Settings(), providers={"email": provider})
    p = pages.path(pages.make_list(db, *ids))
    req = pages.page_request(pages.campaign(db, [p]), p)
    condition = _audience(db.engine, req.settings, req.path, req.all_paths)
    with session_scope(db.engine) as session:
        PageSender().send(session, req, p.messages[0], condition, provider, 1000, datetime.now(UTC))
    with pytest.raises(ApplicationError) as raised:
        acts.send_page(req)
    assert raised.value.type == PROVIDER_UNAVAILABLE
    assert provider.sent == [] and {r.status for r in rows(db)} == {"sending"}
