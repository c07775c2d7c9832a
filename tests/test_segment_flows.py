"""Segments driving flows on the time-skipping server: organic entry triggers, saving does not,
leaving the segment stops the next message, and conditional splits read the same definition."""

from datetime import timedelta

import pytest

from activities.segment_refresh import SegmentRefreshActivities
from herald.core.db import session_scope
from herald.segments.store import create_segment, set_status
from models.segments import Segment
from tests.flow_world import start_world

DAY = timedelta(days=1)


@pytest.fixture
async def world(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        yield world


def email(step_id: str, next_step: str | None = None) -> dict:
    return {
        "id": step_id,
        "type": "message",
        "channel": "email",
        "content": {"subject": step_id, "body": f"{step_id} for {{{{ profile.email }}}}"},
        "smart_sending": False,
        "next": next_step,
    }


BROWSED_RECENTLY = {
    "all_of": [
        {
            "any_of": [
                {
                    "type": "metric",
                    "metric": "Viewed Product",
                    "count": 1,
                    "timeframe": {"type": "last_days", "days": 2},
                }
            ]
        }
    ]
}


async def live_segment(world, definition: dict, name: str = "segment") -> str:
    now = await world.now()
    with session_scope(world.db.engine) as session:
        segment = create_segment(session, name=name, definition=definition, now=now)
        set_status(session, segment, "live", now)
        return segment.id


async def refresh(world) -> None:
    """What the 15-minute schedule does, at the simulated time; then route what it announced."""
    SegmentRefreshActivities(world.db.engine).refresh_time_relative_segments(await world.now())
    await world.route()


def members(world, segment_id: str) -> set[str]:
    rows = world.db.rows(
        "SELECT profile_id FROM segment_membership WHERE segment_id = :s", s=segment_id
    )
    return {r[0] for r in rows}


async def test_entering_triggers_the_flow_and_leaving_stops_it(world):
    early = world.profile("early@example.com")
    await world.event("Viewed Product", early)  # a member before the segment exists
    segment_id = await live_segment(world, BROWSED_RECENTLY)
    assert members(world, segment_id) == {early}
    world.flow(
        {
            "trigger": {"type": "segment", "segment_id": segment_id},
            "steps": [
                email("browse-1", "wait"),
                {"id": "wait", "type": "time_delay", "amount": 3, "unit": "days", "next": "b2"},
                email("b2"),
            ],
        }
    )
    shopper = world.profile("shopper@example.com")
    await world.event("Viewed Product", shopper)
    # Organic entry starts the flow; the member from the definition's save does not.
    assert world.enrollments(early) == []
    assert [s[0] for s in world.sent(shopper)] == ["browse-1"]
    assert members(world, segment_id) == {early, shopper}

    # Two days without browsing: the refresh drops them, so the second message is not sent.
    await world.advance(2 * DAY + timedelta(hours=1))
    await refresh(world)
    assert members(world, segment_id) == set()
    await world.advance(DAY)
    assert [s[0] for s in world.sent(shopper)] == ["browse-1"]
    assert world.deliveries(shopper)[-1] == ("b2", "skipped", "segment")
    [(_, status, reason, _)] = world.enrollments(shopper)
    assert (status, reason) == ("exited", "segment")
    with session_scope(world.db.engine) as session:
        assert session.get(Segment, segment_id).member_count == 0


async def test_browsing_again_re_enters_and_a_split_reads_the_segment(world):
    segment_id = await live_segment(world, BROWSED_RECENTLY)
    vip = await live_segment(
        world,
        {"all_of": [{"any_of": [{"type": "property", "property": "vip", "operator": "is_set"}]}]},
        name="vip",
    )
    world.flow(
        {
            "trigger": {"type": "segment", "segment_id": segment_id},
            "reentry": {"mode": "every_time"},
            "steps": [
                {
                    "id": "is-vip",
                    "type": "conditional_split",
                    "conditions": [{"type": "in_segment", "segment_id": vip}],
                    "yes": "vip-offer",
                    "no": "nudge",
                },
                email("vip-offer"),
                email("nudge"),
            ],
        }
    )
    fan = world.profile("fan@example.com", vip="yes")
    plain = world.profile("plain@example.com")
    await world.event("Viewed Product", fan)
    await world.event("Viewed Product", plain)
    await world.event("Viewed Product", plain)  # still a member: no second entry
    assert [s[0] for s in world.sent(fan)] == ["vip-offer"]
    assert [s[0] for s in world.sent(plain)] == ["nudge"]
    await world.advance(3 * DAY)
    await refresh(world)
    await world.event("Viewed Product", plain)  # out and back in: a new organic entry
    assert [s[0] for s in world.sent(plain)] == ["nudge", "nudge"]
    assert len(world.enrollments(plain)) == 2


def audience(world, campaign_id: str) -> int:
    """The campaign's audience as the sender counts it (review_facts.audience_counts)."""
    from herald.campaigns.review_facts import audience_counts
    from models.campaigns import Campaign, CampaignPath

    with session_scope(world.db.engine) as session:
        campaign = session.get(Campaign, campaign_id)
        paths = session.query(CampaignPath).filter(CampaignPath.campaign_id == campaign_id).all()
        return sum(own for own, _ in audience_counts(session, campaign, paths).values())


async def test_clickers_of_a_step_saved_as_a_segment_become_a_campaign_audience(world, api):
    flow_id = world.flow(
        {
            "trigger": {"type": "metric", "metric": "Placed Order"},
            "steps": [email("thanks", "review"), email("review")],
        }
    )
    ann, bob = world.profile("ann@example.com"), world.profile("bob@example.com")
    await world.event("Placed Order", ann)
    await world.event("Placed Order", bob)

    def review_delivery(profile_id: str) -> str:
        return world.db.scalar(
            "SELECT id FROM delivery WHERE profile_id = :p AND step_id = 'review'", p=profile_id
        )

    await world.event("Clicked Email", ann, **{"$delivery_id": review_delivery(ann)})
    saved = api.post(
        f"/v1/flows/{flow_id}/results/save-as-segment",
        json={"name": "Clicked the review email", "step_id": "review", "result": "clicked"},
    )
    assert saved.status_code == 201, saved.text
    segment = saved.json()
    assert (segment["status"], segment["member_count"]) == ("draft", 1)

    campaign = api.post("/v1/campaigns", json={"name": "Follow-up", "timezone": "UTC"}).json()
    paths = f"/v1/campaigns/{campaign['id']}/paths"
    body = {"name": "Clickers", "include_segments": [segment["id"]]}
    refused = api.post(paths, json=body)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "include_segments[0]"
    assert api.post(f"/v1/segments/{segment['id']}/status", json={"status": "live"}).is_success
    assert api.post(paths, json=body).status_code == 201
    assert audience(world, campaign["id"]) == 1

    # Bob clicks days later: he joins the segment, and with it the campaign's audience.
    await world.advance(2 * DAY)
    await world.event("Clicked Email", bob, **{"$delivery_id": review_delivery(bob)})
    assert members(world, segment["id"]) == {ann, bob}
    assert audience(world, campaign["id"]) == 2
    # The click of the thanks email is not a click of step 2.
    carl = world.profile("carl@example.com")
    await world.event("Placed Order", carl)
    thanks = world.db.scalar(
        "SELECT id FROM delivery WHERE profile_id = :p AND step_id = 'thanks'", p=carl
    )
    await world.event("Clicked Email", carl, **{"$delivery_id": thanks})
    assert members(world, segment["id"]) == {ann, bob}


# ---- seed 001: the win-back flow on RFM groups -----------------------------------------------


def seed_order_history(world, now, customers: int = 600, days: int = 200) -> list[str]:
    """`customers` with 1-6 orders each over the last `days` days (a fixed seed), imported as
    history (backfill: it moves no one into a flow). Every customer is subscribed to email."""
    import random

    from herald.ingest.events import ingest
    from models.events import EventIn

    rng = random.Random(1)
    events = []
    for n in range(customers):
        orders = rng.choice((1, 1, 1, 2, 2, 3, 4, 6))
        for k in range(orders):
            ago = timedelta(days=rng.uniform(0, days), minutes=k)
            if n == 0 and k == 0:
                ago = timedelta(days=days)  # the shop's first order
            events.append(
                EventIn.model_validate(
                    {
                        "metric": "Placed Order",
                        "profile": {"email": f"c{n}@example.com"},
                        "value": round(rng.uniform(10, 300), 2),
                        "time": (now - ago).isoformat(),
                        "unique_id": f"o{n}-{k}",
                        "backfill": True,
                    }
                )
            )
    for start in range(0, len(events), 500):
        ingest(world.db.engine, world.metrics, events[start : start + 500], "import")
    from sqlalchemy import select

    from herald.profiles.consent import set_consent
    from models.enums import Channel, ConsentStatus
    from models.profile import Profile

    with session_scope(world.db.engine) as session:
        profiles = list(session.scalars(select(Profile).order_by(Profile.id)))
        for profile in profiles:
            set_consent(session, profile, Channel.email, ConsentStatus.subscribed, "import")
        return [p.id for p in profiles]


async def run_rfm(world) -> dict:
    from herald.analytics.rfm_run import run_rfm as rfm

    with session_scope(world.db.engine) as session:
        outcome = rfm(session, await world.now())
        report = outcome.run.report
    await world.route()  # the segment_added rows the run wrote reach the flows
    return report


async def test_win_back_follows_rfm_groups_into_the_flow(world):
    now = await world.now()
    customers = seed_order_history(world, now)
    await world.route()
    at_risk = await live_segment(
        world,
        {"all_of": [{"any_of": [{"type": "rfm_group", "groups": ["At Risk", "Needs Attention"]}]}]},
        name="RFM group is At Risk OR Needs Attention",
    )
    world.flow(
        {
            "trigger": {"type": "segment", "segment_id": at_risk},
            "exit_metric": "Placed Order",
            "steps": [
                email("we-miss-you", "wait"),
                {"id": "wait", "type": "time_delay", "amount": 5, "unit": "days", "next": "offer"},
                email("offer"),
            ],
        },
        name="Win-back",
    )
    first = await run_rfm(world)
    assert first["groups"]["At Risk"] + first["groups"]["Needs Attention"] > 0
    entered_first = members(world, at_risk)
    enrolled = {r[0] for r in world.db.rows("SELECT profile_id FROM flow_enrollment")}
    assert enrolled == entered_first
    assert {s[0] for s in world.sent()} == {"we-miss-you"}

    # 40 days on, a third of the customers ordered again: others fall behind them.
    await world.advance(40 * DAY)
    for profile_id in customers[::3]:
        if profile_id not in entered_first:
            await world.event("Placed Order", profile_id, value=50.0)
    mark = world.db.scalar("SELECT max(id) FROM routing_outbox")
    second = await run_rfm(world)
    entered_second = {
        r[0]
        for r in world.db.rows(
            "SELECT profile_id FROM routing_outbox WHERE kind = 'segment_added' AND id > :m",
            m=mark,
        )
    }
    assert entered_second, second["movements"]
    assert not entered_second & entered_first  # already members: not triggered again
    enrolled_now = {r[0] for r in world.db.rows("SELECT profile_id FROM flow_enrollment")}
    assert enrolled_now == entered_first | entered_second

    # A customer in the flow orders: the flow ends for them before the offer.
    buyer = sorted(entered_second)[0]
    await world.event("Placed Order", buyer, value=80.0)
    [(_, status, reason, _)] = world.enrollments(buyer)
    assert (status, reason) == ("exited", "converted")
    await world.advance(6 * DAY)
    assert [s[0] for s in world.sent(buyer)] == ["we-miss-you"]
    stayer = sorted(entered_second - {buyer})[0]
    assert [s[0] for s in world.sent(stayer)] == ["we-miss-you", "offer"]


async def test_a_small_shop_gets_the_eligibility_report_not_groups(world):
    now = await world.now()
    seed_order_history(world, now, customers=100, days=60)
    report = await run_rfm(world)
    unmet = {r["requirement"] for r in report["unmet"]}
    assert unmet == {"customers", "order_history_days"}, report
    assert world.db.scalar("SELECT count(*) FROM rfm_score") == 0


async def test_the_refresh_workflow_drops_members_whose_window_passed(world):
    import uuid

    from workflows.segment_refresh import SegmentRefreshWorkflow

    segment_id = await live_segment(world, BROWSED_RECENTLY)
    shopper = world.profile("shopper@example.com")
    await world.event("Viewed Product", shopper)
    assert members(world, segment_id) == {shopper}
    await world.advance(3 * DAY)
    counts = await world.client.execute_workflow(
        SegmentRefreshWorkflow.run,
        id=f"segment-refresh-{uuid.uuid4().hex[:8]}",
        task_queue=world.settings.task_queue,
    )
    assert (counts.segments_changed, counts.added, counts.removed) == (1, 0, 1)
    assert members(world, segment_id) == set()


async def test_the_refresh_schedule_is_created_once(temporal_server, db):
    import uuid

    from herald.core.config import Settings
    from workflows.segment_refresh import (
        SEGMENT_REFRESH_EVERY,
        SEGMENT_REFRESH_WORKFLOW_ID,
        ensure_segment_refresh_schedule,
    )

    client = temporal_server.client
    settings = Settings(database_url=db.url, task_queue="segments-schedule-test")
    schedule_id = f"herald-segment-refresh-{uuid.uuid4().hex[:8]}"
    await ensure_segment_refresh_schedule(client, settings, schedule_id)
    await ensure_segment_refresh_schedule(client, settings, schedule_id)  # a no-op
    handle = client.get_schedule_handle(schedule_id)
    try:
        described = await handle.describe()
        [interval] = described.schedule.spec.intervals
        assert interval.every == SEGMENT_REFRESH_EVERY
        assert described.schedule.action.id == SEGMENT_REFRESH_WORKFLOW_ID
    finally:
        await handle.delete()
