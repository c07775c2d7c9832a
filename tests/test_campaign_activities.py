"""Campaign sending activities, called directly: audiences, wave plans, pages and exits."""

import itertools
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from temporalio.exceptions import ApplicationError

from activities.campaigns import CampaignActivities
from activities.delivery import DeliveryActivities
from herald.campaigns.audience import campaign_audience, count_of, path_audience
from herald.campaigns.contract import (
    CampaignSettings,
    CampaignSnapshot,
    FinishRequest,
    MessageSnapshot,
    PageRequest,
    PageResult,
    PathSnapshot,
    PlanRequest,
    Wave,
)
from herald.campaigns.waves import plan_waves
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.delivery.providers.base import (
    OutgoingMessage,
    Provider,
    ProviderRejected,
    SendReceipt,
)
from herald.flows.graph import MessageContent
from models.account import Account
from models.campaigns import Campaign, CampaignExit, CampaignMessage, CampaignPath
from models.delivery import Delivery
from models.delivery_dto import DeliveryRequest
from models.events import Event, Metric
from models.lists import ListMembership, ProfileList
from models.profile import Consent, Profile

NOW = datetime(2026, 6, 1, 5, 0, tzinfo=UTC)
EMAIL = MessageContent(
    subject="Hi {{ profile.first_name | default: 'there' }}",
    body="Hello {{ profile.first_name }}, {{ campaign.name }} is live ({{ campaign.id }})",
    sender="shop@example.com",
)
TEXT = MessageContent(body="Drop at 13:00, {{ profile.first_name }}")
_phones = itertools.count(1)


# ---- the world ----------------------------------------------------------------------------------


@pytest.fixture
def account(db):
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
def acts(db, account) -> CampaignActivities:
    return CampaignActivities(db.engine, Settings())


def profiles(
    db,
    count: int,
    *,
    prefix: str = "pr",
    consent: tuple[str, ...] = ("email",),
    timezone: str | None = None,
    phone: bool = False,
    **fields: Any,
) -> list[str]:
    """`count` profiles with ascending ids (so pages and cursors are predictable)."""
    base = new_id("x")[2:]
    ids = [f"{prefix}_{base}{i:06d}" for i in range(count)]
    now = datetime.now(UTC)
    rows = [
        {
            "id": pid,
            "external_id": None,
            "email": f"{pid}@example.com",
            "phone": f"+3161{next(_phones):07d}" if phone else None,
            "anonymous_id": None,
            "first_name": f"N{i}",
            "last_name": None,
            "timezone": timezone,
            "push_tokens": [],
            "properties": {},
            "created_at": now,
            "updated_at": now,
            **fields,
        }
        for i, pid in enumerate(ids)
    ]
    with session_scope(db.engine) as session:
        session.execute(insert(Profile.__table__), rows)
        if consent:
            session.execute(
                insert(Consent.__table__),
                [
                    {
                        "profile_id": pid,
                        "channel": channel,
                        "status": "subscribed",
                        "source": "test",
                        "updated_at": now,
                    }
                    for pid in ids
                    for channel in consent
                ],
            )
    return ids


def earlier_send(profile_id: str, channel: str, at: datetime) -> Delivery:
    """A message sent to the profile before the test (for smart sending and caps)."""
    return Delivery(
        id=new_id("dl"),
        idempotency_key=new_id("earlier"),
        run_kind="flow",
        run_id="fl_0",
        step_id="s0",
        profile_id=profile_id,
        channel=channel,
        status="sent",
        sent_at=at,
    )


def make_list(db, *profile_ids: str) -> str:
    list_id = new_id("li")
    with session_scope(db.engine) as session:
        session.add(ProfileList(id=list_id, name=list_id))
        session.flush()
        if profile_ids:
            session.execute(
                insert(ListMembership.__table__),
                [
                    {"list_id": list_id, "profile_id": p, "added_at": datetime.now(UTC)}
                    for p in profile_ids
                ],
            )
    return list_id


def message(
    channel: str = "email",
    at: str = "2026-06-01T09:00",
    content: MessageContent | None = None,
    **extra: Any,
) -> MessageSnapshot:
    return MessageSnapshot(
        id=new_id("cm"),
        channel=channel,
        content=content or (EMAIL if channel == "email" else TEXT),
        send_at_local=at,
        **extra,
    )


def path(*include: str, exclude: tuple[str, ...] = (), messages=(), position=0) -> PathSnapshot:
    return PathSnapshot(
        id=new_id("pa"),
        position=position,
        name=f"path {position}",
        include_lists=list(include),
        exclude_lists=list(exclude),
        messages=list(messages) or [message()],
    )


def campaign(
    db, paths: list[PathSnapshot], status: str = "scheduled", **settings: Any
) -> CampaignSettings:
    """The rows the API would have written, and the snapshot's settings."""
    cs = CampaignSettings(
        campaign_id=new_id("cp"),
        name="Sneaker drop",
        path_order=[p.id for p in paths],
        **settings,
    )
    with session_scope(db.engine) as session:
        session.add(
            Campaign(
                id=cs.campaign_id,
                name=cs.name,
                status=status,
                timezone=cs.timezone,
                local_time=cs.local_time,
                past_time_policy=cs.past_time_policy,
                exit_metric=cs.exit_metric,
            )
        )
        session.flush()
        for p in paths:
            session.add(
                CampaignPath(
                    id=p.id,
                    campaign_id=cs.campaign_id,
                    position=p.position,
                    name=p.name,
                    include_lists=p.include_lists,
                    exclude_lists=p.exclude_lists,
                )
            )
            session.flush()
            for i, m in enumerate(p.messages):
                session.add(
                    CampaignMessage(
                        id=m.id,
                        campaign_id=cs.campaign_id,
                        path_id=p.id,
                        position=i,
                        channel=m.channel,
                        content=m.content.model_dump(),
                        send_at_local=m.send_at_local,
                        stagger_percent=m.stagger_percent,
                        smart_sending=m.smart_sending,
                        status="scheduled",
                    )
                )
    return cs


def page_request(
    settings: CampaignSettings,
    p: PathSnapshot,
    all_paths: list[PathSnapshot] | None = None,
    msg: int = 0,
    wave: Wave | None = None,
    now: datetime = NOW,
    **fields: Any,
) -> PageRequest:
    return PageRequest(
        settings=settings,
        path=p,
        all_paths=all_paths or [p],
        message_id=p.messages[msg].id,
        wave=wave or Wave(at=now),
        now=now,
        **fields,
    )


def send_all(
    acts: CampaignActivities, req: PageRequest, reset_cursor: bool = False
) -> list[PageResult]:
    """Pages through one wave the way the path workflow does."""
    results, cursor, sent_in_wave = [], req.after_profile_id, req.sent_in_wave
    while True:
        page = acts.send_page(
            req.model_copy(update={"after_profile_id": cursor, "sent_in_wave": sent_in_wave})
        )
        results.append(page)
        cursor = page.last_profile_id or cursor
        sent_in_wave += page.recipients
        if page.done or (req.wave.limit is not None and sent_in_wave >= req.wave.limit):
            return results


def total(results: list[PageResult]) -> tuple[int, Counter, int]:
    skipped: Counter = Counter()
    for r in results:
        skipped.update(r.skipped)
    return sum(r.sent for r in results), skipped, sum(r.failed for r in results)


def outcomes(db, message_id: str) -> dict[str, tuple[str, str | None]]:
    rows = db.rows(
        "SELECT profile_id, status, reason FROM delivery WHERE step_id = :m", m=message_id
    )
    return {r.profile_id: (r.status, r.reason) for r in rows}


def metric_id(db, name: str = "Placed Order") -> int:
    with session_scope(db.engine) as session:
        found = session.execute(select(Metric.id).where(Metric.name == name)).scalar()
        if found is None:
            metric = Metric(name=name, builtin=True)
            session.add(metric)
            session.flush()
            found = metric.id
        return found


def order(db, profile_id: str, at: datetime) -> None:
    with session_scope(db.engine) as session:
        session.add(
            Event(
                profile_id=profile_id,
                metric_id=metric_id(db),
                time=at,
                unique_id=new_id("ev"),
            )
        )


def audience_ids(db, settings, p, all_paths) -> set[str]:
    with session_scope(db.engine) as session:
        return set(session.execute(path_audience(settings, p, all_paths)).scalars())


# ---- audiences ----------------------------------------------------------------------------------


def test_audience_first_path_wins_and_excludes_apply(db, acts):
    p = profiles(db, 8)
    a = make_list(db, p[0], p[1], p[2], p[3], p[4])
    b = make_list(db, p[1], p[3], p[4], p[5], p[6], p[7])
    c = make_list(db, p[7])
    excluded = make_list(db, p[1], p[5])
    first = path(a, exclude=(excluded,), position=0)
    second = path(b, c, position=1)  # two included lists: members of either
    third = path(c, position=2)
    paths = [first, second, third]
    settings = campaign(db, paths)

    assert audience_ids(db, settings, first, paths) == {p[0], p[2], p[3], p[4]}
    # p1 is excluded from the first path only, so the second path (its next) gets it.
    assert audience_ids(db, settings, second, paths) == {p[1], p[5], p[6], p[7]}
    assert audience_ids(db, settings, third, paths) == set()

    # The order is settings.path_order, not the list's order or positions.
    reordered = settings.model_copy(update={"path_order": [second.id, first.id, third.id]})
    assert audience_ids(db, reordered, first, paths) == {p[0], p[2]}

    snapshot = CampaignSnapshot(settings=settings, paths=paths)
    assert acts.count_campaign_audience(snapshot) == 8
    with session_scope(db.engine) as session:
        assert session.execute(count_of(campaign_audience([first]))).scalar() == 4


def test_audience_refuses_segments_and_missing_paths(db, acts):
    p = profiles(db, 1)
    lst = make_list(db, *p)
    first, second = path(lst), path(lst, position=1)
    settings = campaign(db, [first, second])
    with pytest.raises(ValueError, match="names segment 'sg_1', which does not exist"):
        path_audience(settings, first.model_copy(update={"include_segments": ["sg_1"]}))
    with pytest.raises(ValueError, match="earlier path"):
        path_audience(settings, second, [second])  # the first path is needed for first-wins
    with pytest.raises(ApplicationError) as info:
        acts.send_page(page_request(settings, second, [second]))
    assert info.value.non_retryable


# ---- plans --------------------------------------------------------------------------------------


def test_plan_fixed_time_in_the_campaign_timezone(db, acts):
    ids = profiles(db, 3)
    p = path(make_list(db, *ids))
    settings = campaign(db, [p], timezone="Europe/Amsterdam")
    plan = acts.plan_message(
        PlanRequest(settings=settings, path=p, all_paths=[p], message_id=p.messages[0].id, now=NOW)
    )
    assert plan.audience == 3
    assert plan.waves == [Wave(at=datetime(2026, 6, 1, 7, 0, tzinfo=UTC))]  # 09:00 CEST
    assert db.scalar("SELECT audience_size FROM campaign_message") == 3


def test_staggered_25_percent_over_1000_is_four_hourly_waves_of_250(db, acts):
    ids = profiles(db, 1000)
    p = path(make_list(db, *ids), messages=[message(stagger_percent=25)])
    settings = campaign(db, [p])
    plan = acts.plan_message(
        PlanRequest(settings=settings, path=p, all_paths=[p], message_id=p.messages[0].id, now=NOW)
    )
    start = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    assert plan.audience == 1000
    assert [(w.at, w.limit) for w in plan.waves] == [
        (start, 250),
        (start + timedelta(hours=1), 250),
        (start + timedelta(hours=2), 250),
        (start + timedelta(hours=3), None),  # the rest
    ]
    per_wave = []
    for k, wave in enumerate(plan.waves):
        # The second wave restarts its cursor: rows of earlier waves are left out anyway.
        results = send_all(acts, page_request(settings, p, wave=wave, now=wave.at, page_size=100))
        per_wave.append(total(results)[0])
        assert k != 1 or len(results) == 3  # 100 + 100 + 50
    assert per_wave == [250, 250, 250, 250]
    assert db.scalar("SELECT count(DISTINCT profile_id) FROM delivery") == 1000


def test_staggered_percent_that_does_not_divide_100():
    m = message(stagger_percent=30)
    waves = plan_waves(CampaignSettings(campaign_id="c", name="n"), m, NOW, 10)
    assert [w.limit for w in waves] == [3, 3, 3, None]


@pytest.mark.parametrize("policy", ["immediately", "next_day"])
def test_local_time_waves_per_timezone(db, acts, policy):
    amsterdam = profiles(db, 2, prefix="pa", timezone="Europe/Amsterdam")
    new_york = profiles(db, 2, prefix="pb", timezone="America/New_York")
    tokyo = profiles(db, 2, prefix="pc", timezone="Asia/Tokyo")
    unknown = profiles(db, 1, prefix="pd", timezone="Mars/Olympus_Mons")
    no_zone = profiles(db, 1, prefix="pe")
    p = path(make_list(db, *amsterdam, *new_york, *tokyo, *unknown, *no_zone))
    settings = campaign(db, [p], timezone="Europe/London", local_time=True, past_time_policy=policy)
    # 05:00 UTC: 09:00 in Tokyo (00:00 UTC) has passed; London, Amsterdam and New York are ahead.
    plan = acts.plan_message(
        PlanRequest(settings=settings, path=p, all_paths=[p], message_id=p.messages[0].id, now=NOW)
    )
    tokyo_at = NOW if policy == "immediately" else datetime(2026, 6, 2, 0, 0, tzinfo=UTC)
    expected = sorted(
        [
            (tokyo_at, ["Asia/Tokyo"]),
            (datetime(2026, 6, 1, 7, 0, tzinfo=UTC), ["Europe/Amsterdam"]),
            (datetime(2026, 6, 1, 8, 0, tzinfo=UTC), ["Europe/London"]),  # unknown → campaign
            (datetime(2026, 6, 1, 13, 0, tzinfo=UTC), ["America/New_York"]),
        ]
    )
    assert plan.audience == 8
    assert [(w.at, w.timezones) for w in plan.waves] == expected

    who = {
        "Asia/Tokyo": set(tokyo),
        "Europe/Amsterdam": set(amsterdam),
        "Europe/London": set(unknown + no_zone),
        "America/New_York": set(new_york),
    }
    for wave in plan.waves:
        send_all(acts, page_request(settings, p, wave=wave, now=max(wave.at, NOW)))
        with session_scope(db.engine) as session:
            sent_at = set(
                session.execute(
                    select(Delivery.profile_id).where(Delivery.sent_at == max(wave.at, NOW))
                ).scalars()
            )
        assert sent_at == who[wave.timezones[0]]
    assert db.scalar("SELECT count(*) FROM delivery") == 8


def test_local_time_staggered_waves_split_each_timezone(db, acts):
    amsterdam = profiles(db, 4, prefix="pa", timezone="Europe/Amsterdam")
    tokyo = profiles(db, 2, prefix="pb", timezone="Asia/Tokyo")
    p = path(make_list(db, *amsterdam, *tokyo), messages=[message(stagger_percent=50)])
    settings = campaign(db, [p], local_time=True, past_time_policy="next_day")
    plan = acts.plan_message(
        PlanRequest(settings=settings, path=p, all_paths=[p], message_id=p.messages[0].id, now=NOW)
    )
    assert [(w.timezones, w.limit) for w in plan.waves] == [
        (["Europe/Amsterdam"], 2),
        (["Europe/Amsterdam"], None),
        (["Asia/Tokyo"], 1),
        (["Asia/Tokyo"], None),
    ]
    sent = []
    for wave in plan.waves:  # local-time waves restart the cursor, as the workflow does
        sent.append(total(send_all(acts, page_request(settings, p, wave=wave, now=wave.at)))[0])
    assert sent == [2, 2, 1, 1]


# ---- send_page: policy --------------------------------------------------------------------------


def test_every_skip_reason_and_the_sent_message(db, acts, account):
    account(frequency_caps={"email": {"per_day": 1}})
    sent, unsubscribed, never, smart, capped, bad = (
        profiles(db, 1, prefix=f"p{i}")[0] for i in range(6)
    )
    missing = profiles(db, 1, prefix="p9", email=None)[0]
    db.execute("UPDATE consent SET status = 'unsubscribed' WHERE profile_id = :p", p=unsubscribed)
    db.execute("DELETE FROM consent WHERE profile_id = :p", p=never)
    db.execute("""UPDATE profile SET properties = '{"zero": 0}' WHERE id = :p""", p=bad)
    with session_scope(db.engine) as session:
        for pid, ago in ((smart, 2), (capped, 20)):  # 2 h: within 16 h; 20 h: only the cap
            session.add(earlier_send(pid, "email", NOW - timedelta(hours=ago)))
    content = MessageContent(
        subject=EMAIL.subject,
        body=EMAIL.body + "{% if profile.zero == 0 %}{{ 1 | divided_by: profile.zero }}{% endif %}",
    )
    members = [sent, missing, unsubscribed, never, smart, capped, bad]
    p = path(make_list(db, *members), messages=[message(content=content)])
    settings = campaign(db, [p])

    result = acts.send_page(page_request(settings, p))

    assert result == PageResult(
        recipients=7,
        sent=1,
        skipped={"missing_address": 1, "no_consent": 2, "smart_sending": 1, "capped": 1},
        failed=1,
        last_profile_id=max(members),
        done=True,
    )
    assert outcomes(db, p.messages[0].id) == {
        sent: ("sent", None),
        missing: ("skipped", "missing_address"),
        unsubscribed: ("skipped", "no_consent"),
        never: ("skipped", "no_consent"),
        smart: ("skipped", "smart_sending"),
        capped: ("skipped", "capped"),
        bad: ("failed", "template_error"),
    }
    [box] = db.rows("SELECT * FROM message_outbox")
    [row] = db.rows("SELECT * FROM delivery WHERE status = 'sent' AND run_kind = 'campaign'")
    assert box.delivery_id == row.id and row.provider_message_id == str(box.id)
    assert (box.profile_id, box.channel, box.to_address) == (sent, "email", f"{sent}@example.com")
    assert box.subject == row.subject == "Hi N0"
    assert box.body == f"Hello N0, Sneaker drop is live ({settings.campaign_id})"
    assert row.idempotency_key == f"campaign:{settings.campaign_id}:{p.messages[0].id}:{sent}"
    assert row.workflow_id == f"campaign/{settings.campaign_id}/path/{p.id}"
    assert (row.provider, row.run_id, row.step_id) == (
        "outbox",
        settings.campaign_id,
        p.messages[0].id,
    )


def test_channel_disabled_and_quiet_hours(db, acts, account):
    night = profiles(db, 1, prefix="pa", consent=("sms",), phone=True, timezone="Asia/Tokyo")
    day = profiles(db, 1, prefix="pb", consent=("sms",), phone=True, timezone="Europe/Amsterdam")
    unknown = profiles(db, 1, prefix="pc", consent=("sms",), phone=True, timezone="Nowhere/Else")
    p = path(make_list(db, *night, *day, *unknown), messages=[message("sms")])
    # 13:00 UTC: 22:00 in Tokyo (quiet), 15:00 in Amsterdam; unknown → campaign zone, 23:00.
    settings = campaign(db, [p], timezone="Australia/Brisbane")
    at = datetime(2026, 6, 1, 13, 0, tzinfo=UTC)

    account(enabled_channels=["email"])
    disabled = acts.send_page(page_request(settings, p, now=at))
    assert disabled.skipped == {"channel_disabled": 3} and disabled.sent == 0

    db.execute("DELETE FROM delivery")
    account(enabled_channels=["email", "sms"])
    result = acts.send_page(page_request(settings, p, now=at + timedelta(minutes=1)))
    assert (result.sent, result.skipped) == (1, {"quiet_hours": 2})
    assert outcomes(db, p.messages[0].id) == {
        night[0]: ("skipped", "quiet_hours"),
        day[0]: ("sent", None),
        unknown[0]: ("skipped", "quiet_hours"),
    }
    assert db.scalar("SELECT to_address FROM message_outbox") == db.scalar(
        "SELECT phone FROM profile WHERE id = :p", p=day[0]
    )


def test_a_retried_page_sends_nothing_twice(db, acts):
    ids = profiles(db, 30)
    p = path(make_list(db, *ids))
    settings = campaign(db, [p])
    req = page_request(settings, p, page_size=20)

    first = acts.send_page(req)
    again = acts.send_page(req)  # the activity retried after its first attempt committed

    assert first == again == PageResult(recipients=20, sent=20, last_profile_id=ids[19], done=False)
    assert db.scalar("SELECT count(*) FROM delivery") == 20
    assert db.scalar("SELECT count(*) FROM message_outbox") == 20
    # The workflow goes on: the next page (later) takes the remaining ten.
    later = NOW + timedelta(seconds=1)
    rest = acts.send_page(req.model_copy(update={"after_profile_id": ids[19], "now": later}))
    assert (rest.recipients, rest.sent, rest.done) == (10, 10, True)
    # A page whose cursor was lost starts over and finds only people already sent: nothing.
    restart = acts.send_page(req.model_copy(update={"now": later + timedelta(seconds=1)}))
    assert (restart.recipients, restart.sent, restart.done) == (0, 0, True)
    rows = db.rows("SELECT idempotency_key, count(*) AS n FROM delivery GROUP BY idempotency_key")
    assert len(rows) == 30 and all(r.n == 1 for r in rows)
    assert db.scalar("SELECT count(DISTINCT delivery_id) FROM message_outbox") == 30


def test_a_cancelled_campaign_sends_no_more_pages(db, acts):
    ids = profiles(db, 3)
    p = path(make_list(db, *ids))
    settings = campaign(db, [p], status="cancelled")
    assert acts.send_page(page_request(settings, p)) == PageResult(recipients=0, sent=0, done=True)
    assert db.scalar("SELECT count(*) FROM delivery") == 0


class RecordingProvider(Provider):
    """An external provider (like SMTP): one call per message; refuses one address."""

    name = "fake"

    def __init__(self, refuse: str):
        self.refuse = refuse
        self.sent: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        if message.to_address == self.refuse:
            raise ProviderRejected("provider_rejected", "550 no such user")
        self.sent.append(message)
        return SendReceipt(provider_message_id=f"<{message.delivery_id}@fake>")


def test_an_external_provider_gets_one_call_per_message(db, account):
    ids = profiles(db, 3)
    refuse = f"{ids[1]}@example.com"
    provider = RecordingProvider(refuse)
    acts = CampaignActivities(db.engine, Settings(), providers={"email": provider})
    p = path(make_list(db, *ids))
    settings = campaign(db, [p])
    req = page_request(settings, p)

    result = acts.send_page(req)
    assert (result.sent, result.failed) == (2, 1)
    assert acts.send_page(req) == result  # a retry: no second call
    assert [m.profile_id for m in provider.sent] == [ids[0], ids[2]]
    assert provider.sent[0].subject == "Hi N0" and provider.sent[0].sender == "shop@example.com"
    assert outcomes(db, p.messages[0].id)[ids[1]] == ("failed", "provider_rejected")
    rows = db.rows("SELECT id, provider, provider_message_id FROM delivery WHERE status = 'sent'")
    assert {(r.provider, r.provider_message_id) for r in rows} == {
        ("fake", f"<{r.id}@fake>") for r in rows
    }
    assert db.scalar("SELECT count(*) FROM message_outbox") == 0


# ---- exits and the start ------------------------------------------------------------------------


def test_the_campaign_starts_with_its_first_real_send(db, acts):
    silent = profiles(db, 2, prefix="pa", consent=())
    ids = profiles(db, 2, prefix="pb")
    p = path(make_list(db, *silent), messages=[message(), message(at="2026-06-01T13:00")])
    q = path(make_list(db, *ids), position=1)
    settings = campaign(db, [p, q])

    skipped_only = acts.send_page(page_request(settings, p, [p, q]))
    assert skipped_only.skipped == {"no_consent": 2}
    assert db.scalar("SELECT started_at FROM campaign") is None
    assert db.scalar("SELECT status FROM campaign") == "sending"
    assert db.scalar("SELECT status FROM campaign_message WHERE id = :m", m=p.messages[0].id) == (
        "sending"
    )

    first_send = NOW + timedelta(minutes=5)
    acts.send_page(page_request(settings, q, [p, q], now=first_send))
    later = first_send + timedelta(hours=4)
    acts.send_page(page_request(settings, p, [p, q], msg=1, now=later))
    started = db.scalar("SELECT started_at FROM campaign")
    assert started is not None
    assert datetime.fromisoformat(str(started)).replace(tzinfo=UTC) == first_send


def test_exit_criteria_exclude_conversions_after_the_start_only(db, acts):
    before, after, recorded, never = (profiles(db, 1, prefix=f"p{i}")[0] for i in range(4))
    first, second = message(), message(at="2026-06-01T13:00", smart_sending=False)
    p = path(make_list(db, before, after, recorded, never), messages=[first, second])
    settings = campaign(db, [p], exit_metric="Placed Order")
    order(db, before, NOW - timedelta(days=1))  # ordered the day before the campaign

    assert acts.send_page(page_request(settings, p)).sent == 4  # starts the campaign at NOW
    order(db, after, NOW + timedelta(minutes=15))  # not yet routed: no exit row
    order(db, recorded, NOW + timedelta(minutes=20))
    with session_scope(db.engine) as session:
        session.execute(
            insert(CampaignExit.__table__),
            [
                {
                    "campaign_id": settings.campaign_id,
                    "profile_id": recorded,
                    "event_id": None,
                    "converted_at": NOW + timedelta(minutes=20),
                }
            ],
        )

    later = NOW + timedelta(hours=4)
    result = acts.send_page(page_request(settings, p, msg=1, now=later))

    assert (result.sent, result.skipped) == (2, {"exited": 2})
    assert outcomes(db, second.id) == {
        before: ("sent", None),
        after: ("skipped", "exited"),
        recorded: ("skipped", "exited"),
        never: ("sent", None),
    }
    exits = db.rows("SELECT profile_id, event_id FROM campaign_exit ORDER BY profile_id")
    assert {r.profile_id for r in exits} == {after, recorded}
    assert next(r.event_id for r in exits if r.profile_id == after) is not None


def test_a_conversion_before_the_first_send_never_excludes(db, acts):
    ids = profiles(db, 1)
    p = path(make_list(db, *ids))
    settings = campaign(db, [p], exit_metric="Placed Order")
    order(db, ids[0], NOW - timedelta(minutes=1))
    assert acts.send_page(page_request(settings, p)).sent == 1


def test_deliver_activity_uses_the_same_exit_rule(db, account):
    converted, loyal = profiles(db, 1, prefix="pa")[0], profiles(db, 1, prefix="pb")[0]
    p = path(make_list(db, converted, loyal))
    settings = campaign(db, [p], exit_metric="Placed Order")
    db.execute(
        "UPDATE campaign SET started_at = :at, status = 'sending'", at=NOW.replace(tzinfo=None)
    )
    order(db, converted, NOW + timedelta(minutes=15))
    order(db, loyal, NOW - timedelta(days=3))
    deliver = DeliveryActivities(db.engine, Settings(), clock=lambda: NOW + timedelta(hours=1))

    def request(pid: str) -> DeliveryRequest:
        return DeliveryRequest(
            idempotency_key=f"campaign:{settings.campaign_id}:m9:{pid}",
            run_kind="campaign",
            run_id=settings.campaign_id,
            step_id="m9",
            profile_id=pid,
            channel="email",
            content=EMAIL,
        )

    result = deliver.deliver(request(converted))
    assert (result.status, result.reason) == ("skipped", "exited")
    assert deliver.deliver(request(loyal)).status == "sent"


# ---- closing ------------------------------------------------------------------------------------


def test_finish_and_mark_message(db, acts):
    p = path(make_list(db), messages=[message(), message()])
    settings = campaign(db, [p])
    cid = settings.campaign_id
    acts.mark_message(FinishRequest(campaign_id=cid, message_id=p.messages[0].id, status="sent"))
    acts.mark_message(  # never backwards
        FinishRequest(campaign_id=cid, message_id=p.messages[0].id, status="sending")
    )
    acts.finish_campaign(FinishRequest(campaign_id=cid, status="cancelled", reason="no_recipients"))
    acts.finish_campaign(FinishRequest(campaign_id=cid, status="sent"))  # stays cancelled
    row = db.rows("SELECT status, cancel_reason, finished_at FROM campaign")[0]
    assert (row.status, row.cancel_reason) == ("cancelled", "no_recipients")
    assert row.finished_at is not None
    statuses = dict(db.rows("SELECT id, status FROM campaign_message"))
    assert statuses == {p.messages[0].id: "sent", p.messages[1].id: "cancelled"}

    other = campaign(db, [path(make_list(db))])
    db.execute("UPDATE campaign SET status = 'sending' WHERE id = :c", c=other.campaign_id)
    acts.finish_campaign(FinishRequest(campaign_id=other.campaign_id, status="sent"))
    assert db.scalar("SELECT status FROM campaign WHERE id = :c", c=other.campaign_id) == "sent"
    with pytest.raises(ApplicationError):
        acts.finish_campaign(FinishRequest(campaign_id=cid, status="draft"))


# ---- throughput ---------------------------------------------------------------------------------


def test_a_20000_recipient_path_in_pages_of_1000(db, acts, capsys):
    ids = profiles(db, 20_000)
    p = path(make_list(db, *ids))
    settings = campaign(db, [p], exit_metric="Placed Order")
    started = time.perf_counter()
    results = send_all(acts, page_request(settings, p, page_size=1000))
    elapsed = time.perf_counter() - started
    sent, skipped, failed = total(results)
    assert (sent, skipped, failed) == (20_000, Counter(), 0)
    assert len(results) == 21  # 20 full pages, then an empty one that says done
    assert db.scalar("SELECT count(*) FROM message_outbox") == 20_000
    with capsys.disabled():
        print(
            f"\n[{db.backend}] send_page: {sent} messages in {elapsed:.2f}s"
            f" = {sent / elapsed:,.0f} messages/s (pages of 1,000)"
        )
