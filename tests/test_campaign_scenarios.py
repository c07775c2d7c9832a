"""Campaigns as SPEC.md tells them, on the time-skipping server: the sneaker drop, paths, waves."""

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from herald.campaigns.contract import (
    QUERY_STATE,
    CampaignSettings,
    CampaignSnapshot,
    MessageSnapshot,
    PathRun,
    PathSnapshot,
    campaign_workflow_id,
    path_workflow_id,
)
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.flows.graph import MessageContent
from herald.profiles.lists import add_members
from models.campaigns import Campaign, CampaignMessage, CampaignPath
from models.lists import ProfileList
from tests.flow_world import start_world

AMSTERDAM = ZoneInfo("Europe/Amsterdam")


@pytest.fixture
async def world(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        yield world


def make_list(world, name: str, *profiles: str) -> str:
    list_id = new_id("li")
    with session_scope(world.db.engine) as session:
        session.add(ProfileList(id=list_id, name=name))
        session.flush()
        if profiles:
            add_members(session, list_id, list(profiles))
    return list_id


def message(channel: str, at: datetime, body: str, **extra) -> MessageSnapshot:
    subject = body if channel == "email" else None
    return MessageSnapshot(
        id=new_id("cm"),
        channel=channel,
        content=MessageContent(subject=subject, body=body, sender="shop@example.com"),
        send_at_local=at.strftime("%Y-%m-%dT%H:%M"),
        **extra,
    )


def store(world, settings: CampaignSettings, paths: list[PathSnapshot]) -> CampaignSnapshot:
    """The rows the API would have written, and the snapshot it would schedule."""
    with session_scope(world.db.engine) as session:
        session.add(
            Campaign(
                id=settings.campaign_id,
                name=settings.name,
                status="scheduled",
                timezone=settings.timezone,
                local_time=settings.local_time,
                past_time_policy=settings.past_time_policy,
                exit_metric=settings.exit_metric,
            )
        )
        session.flush()
        for path in paths:
            session.add(
                CampaignPath(
                    id=path.id,
                    campaign_id=settings.campaign_id,
                    position=path.position,
                    name=path.name,
                    include_lists=path.include_lists,
                    exclude_lists=path.exclude_lists,
                )
            )
            session.flush()
            for i, m in enumerate(path.messages):
                session.add(
                    CampaignMessage(
                        id=m.id,
                        campaign_id=settings.campaign_id,
                        path_id=path.id,
                        position=i,
                        channel=m.channel,
                        content=m.content.model_dump(),
                        send_at_local=m.send_at_local,
                        stagger_percent=m.stagger_percent,
                        smart_sending=m.smart_sending,
                        status="scheduled",
                    )
                )
    settings.path_order = [p.id for p in paths]
    return CampaignSnapshot(settings=settings, paths=paths, search_attributes=False)


async def schedule(world, snapshot: CampaignSnapshot):
    return await world.client.start_workflow(
        "Campaign",
        snapshot,
        id=campaign_workflow_id(snapshot.settings.campaign_id),
        task_queue=world.settings.task_queue,
    )


async def settle_campaign(world, snapshot: CampaignSnapshot, within: float = 30.0) -> None:
    """Waits until every path workflow sleeps until a future wave, or has finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    campaign = snapshot.settings.campaign_id
    while True:
        now = await world.now()
        parked = True
        for path in snapshot.paths:
            handle = world.client.get_workflow_handle(path_workflow_id(campaign, path.id))
            try:
                description = await handle.describe()
            except Exception:  # not started yet
                parked = False
                break
            if description.status is not None and description.status.name != "RUNNING":
                continue
            run: PathRun | None = await handle.query(QUERY_STATE, result_type=PathRun)
            waiting = run is not None and any(
                p.next_wave_at is not None and p.next_wave_at > now and p.state != "sending"
                for p in run.progress
            )
            parked = parked and waiting
        if parked:
            return
        if loop.time() > deadline:
            raise AssertionError("campaign did not settle")
        await asyncio.sleep(0.05)


def got(world, profile_id: str) -> list[str]:
    return [body for _, _, body in world.sent(profile_id)]


async def test_the_sneaker_drop(world):
    local_now = (await world.now()).astimezone(AMSTERDAM)
    day1 = (local_now + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    buys_at_915 = world.profile("fast@example.com", phone="+31612345671", consent=("email", "sms"))
    bought_before = world.profile(
        "early@example.com", phone="+31612345672", consent=("email", "sms")
    )
    never_buys = world.profile("window@example.com", phone="+31612345673", consent=("email", "sms"))
    email_only = world.profile("mailonly@example.com", phone="+31612345674", consent=("email",))
    everyone = [buys_at_915, bought_before, never_buys, email_only]
    sneakerheads = make_list(world, "Sneakerheads", *everyone)
    await world.event("Placed Order", bought_before, "old-order", value=80)  # the day before

    drop = [
        message("email", day1, "The drop is live"),
        message("sms", day1.replace(hour=13), "Last pairs"),
        message("email", day1 + timedelta(days=1), "Restocked sizes"),
    ]
    snapshot = store(
        world,
        CampaignSettings(
            campaign_id=new_id("cp"),
            name="Sneaker drop",
            timezone="Europe/Amsterdam",
            exit_metric="Placed Order",
        ),
        [
            PathSnapshot(
                id=new_id("pa"), position=0, name="All", include_lists=[sneakerheads], messages=drop
            )
        ],
    )
    handle = await schedule(world, snapshot)
    await settle_campaign(world, snapshot)

    async def until(at: datetime) -> None:
        await world.env.sleep(at - await world.now())
        await settle_campaign(world, snapshot)

    await until(day1 + timedelta(minutes=1))
    assert all(got(world, p) == ["The drop is live"] for p in everyone)
    await until(day1 + timedelta(minutes=15))
    await world.event("Placed Order", buys_at_915, "drop-order", value=180)
    await until(day1.replace(hour=13, minute=1))
    await until(day1 + timedelta(days=1, minutes=1))
    assert await handle.result() == "sent"

    assert got(world, buys_at_915) == ["The drop is live"]
    assert got(world, bought_before) == ["The drop is live", "Last pairs", "Restocked sizes"]
    assert got(world, never_buys) == ["The drop is live", "Last pairs", "Restocked sizes"]
    assert got(world, email_only) == ["The drop is live", "Restocked sizes"]
    assert ("skipped", "no_consent") in [
        (status, reason) for _, status, reason in world.deliveries(email_only)
    ]
    exited = world.db.rows("SELECT profile_id FROM campaign_exit")
    assert [r[0] for r in exited] == [buys_at_915]
    assert world.db.scalar("SELECT status FROM campaign") == "sent"


def one_path(list_id: str, *messages: MessageSnapshot, **fields) -> PathSnapshot:
    return PathSnapshot(
        id=new_id("pa"),
        position=0,
        name="All",
        include_lists=[list_id],
        messages=list(messages),
        **fields,
    )


async def test_vips_get_only_the_vip_path_and_excluded_members_get_nothing(world):
    local_now = (await world.now()).astimezone(AMSTERDAM)
    at = (local_now + timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
    vip = world.profile("vip@example.com")
    regular = world.profile("regular@example.com")
    blocked = world.profile("blocked@example.com")
    vips = make_list(world, "VIP", vip)
    everyone = make_list(world, "Everyone", vip, regular, blocked)
    do_not_send = make_list(world, "Do not send", blocked)
    snapshot = store(
        world,
        CampaignSettings(campaign_id=new_id("cp"), name="Two paths", timezone="Europe/Amsterdam"),
        [
            PathSnapshot(
                id=new_id("pa"),
                position=0,
                name="VIP",
                include_lists=[vips],
                messages=[message("email", at, "VIP early access")],
            ),
            PathSnapshot(
                id=new_id("pa"),
                position=1,
                name="Everyone else",
                include_lists=[everyone],
                exclude_lists=[do_not_send],
                messages=[message("email", at, "Sale starts")],
            ),
        ],
    )
    handle = await schedule(world, snapshot)
    await settle_campaign(world, snapshot)
    await world.env.sleep(at + timedelta(minutes=1) - await world.now())
    assert await handle.result() == "sent"
    assert got(world, vip) == ["VIP early access"]
    assert got(world, regular) == ["Sale starts"]
    assert got(world, blocked) == []


async def test_local_time_sends_at_nine_in_each_recipients_own_timezone(world):
    utc_now = await world.now()
    # Two days ahead: 09:00 is still to come in every zone (the past-time case is below).
    day = (utc_now + timedelta(days=2)).date()
    zones = {
        "Europe/Amsterdam": world.profile("ams@example.com", timezone="Europe/Amsterdam"),
        "America/New_York": world.profile("nyc@example.com", timezone="America/New_York"),
        "Asia/Tokyo": world.profile("tyo@example.com", timezone="Asia/Tokyo"),
    }
    unknown = world.profile("nowhere@example.com")
    members = make_list(world, "World", *zones.values(), unknown)
    nine = datetime(day.year, day.month, day.day, 9, 0)
    snapshot = store(
        world,
        CampaignSettings(
            campaign_id=new_id("cp"), name="Local", timezone="Europe/Amsterdam", local_time=True
        ),
        [one_path(members, message("email", nine, "Good morning"))],
    )
    handle = await schedule(world, snapshot)
    await settle_campaign(world, snapshot)
    await world.env.sleep(timedelta(days=3))
    assert await handle.result() == "sent"
    for zone, profile in {**zones, "Europe/Amsterdam (campaign)": unknown}.items():
        [sent_at] = [
            r[0]
            for r in world.db.rows(
                "SELECT sent_at FROM delivery WHERE profile_id = :p AND status = 'sent'", p=profile
            )
        ]
        sent_at = sent_at if isinstance(sent_at, datetime) else datetime.fromisoformat(sent_at)
        if sent_at.tzinfo is None:
            sent_at = sent_at.replace(tzinfo=ZoneInfo("UTC"))
        local = sent_at.astimezone(ZoneInfo(zone.split(" ")[0]))
        assert (local.date(), local.hour) == (day, 9), zone


@pytest.mark.parametrize("policy", ["immediately", "next_day"])
async def test_past_local_times_follow_the_policy(world, policy):
    utc_now = await world.now()
    tokyo = ZoneInfo("Asia/Tokyo")
    # A wall time one hour ago in Tokyo, but still ahead in Honolulu.
    wall = (utc_now.astimezone(tokyo) - timedelta(hours=1)).replace(
        tzinfo=None, second=0, microsecond=0
    )
    late = world.profile("tokyo@example.com", timezone="Asia/Tokyo")
    early = world.profile("honolulu@example.com", timezone="Pacific/Honolulu")
    members = make_list(world, "Pacific", late, early)
    snapshot = store(
        world,
        CampaignSettings(
            campaign_id=new_id("cp"),
            name="Past",
            timezone="Pacific/Honolulu",
            local_time=True,
            past_time_policy=policy,
        ),
        [one_path(members, message("email", wall, "Hello"))],
    )
    handle = await schedule(world, snapshot)
    await settle_campaign(world, snapshot)
    if policy == "immediately":
        assert got(world, late) == ["Hello"], "already past in Tokyo: sent at once"
    else:
        assert got(world, late) == []
    await world.env.sleep(timedelta(days=2))
    assert await handle.result() == "sent"
    assert got(world, late) == ["Hello"] and got(world, early) == ["Hello"]


async def test_staggered_sends_release_a_quarter_of_the_path_each_hour(world):
    local_now = (await world.now()).astimezone(AMSTERDAM)
    start = (local_now + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    profiles = [world.profile(f"fan{i}@example.com") for i in range(1000)]
    fans = make_list(world, "Fans", *profiles)
    snapshot = store(
        world,
        CampaignSettings(campaign_id=new_id("cp"), name="Stagger", timezone="Europe/Amsterdam"),
        [one_path(fans, message("email", start, "Wave", stagger_percent=25))],
    )
    handle = await schedule(world, snapshot)
    await settle_campaign(world, snapshot)
    counts = []
    for hour in range(4):
        await world.env.sleep(start + timedelta(hours=hour, minutes=1) - await world.now())
        await settle_campaign(world, snapshot) if hour < 3 else None
        counts.append(world.db.scalar("SELECT count(*) FROM message_outbox"))
    assert await handle.result() == "sent"
    assert counts == [250, 500, 750, 1000]


async def test_a_campaign_whose_audience_is_empty_ends_cancelled_with_the_reason(world):
    local_now = (await world.now()).astimezone(AMSTERDAM)
    nobody = make_list(world, "Nobody")
    snapshot = store(
        world,
        CampaignSettings(campaign_id=new_id("cp"), name="Empty", timezone="Europe/Amsterdam"),
        [one_path(nobody, message("email", local_now + timedelta(days=1), "Hi"))],
    )
    handle = await schedule(world, snapshot)
    assert await handle.result() == "cancelled"
    [(status, reason)] = world.db.rows("SELECT status, cancel_reason FROM campaign")
    assert (status, reason) == ("cancelled", "no_recipients")
