"""A campaign the way a user runs it: built, reviewed and scheduled over HTTP, sent by a worker."""

import asyncio
from datetime import timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from temporalio.service import RPCError

from api.app import create_app
from herald.campaigns.contract import QUERY_STATE, PathRun
from herald.core.config import Settings
from tests.conftest import serve
from tests.flow_world import start_world
from tests.test_campaign_scenarios import make_list


@pytest.fixture
async def stack(skipping_env, db, keys):
    world, worker = await start_world(skipping_env, db)
    settings = Settings(
        database_url=db.url,
        temporal_address=skipping_env.client.service_client.config.target_host,
        task_queue=world.settings.task_queue,
        api_key_cache_seconds=0,
        search_attributes=False,
    )
    app = create_app(settings, engine=db.engine)
    async with worker:
        with serve(app) as base_url:
            headers = {"Authorization": f"Bearer {keys.private}"}
            async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as admin:
                yield world, admin


async def test_building_scheduling_and_reporting_a_campaign(stack):
    world, admin = stack
    shoppers = [world.profile(f"c{i}@example.com") for i in range(4)]
    members = make_list(world, "Customers", *shoppers)
    local = (await world.now()).astimezone(ZoneInfo("Europe/Amsterdam"))
    day1 = (local + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)

    campaign = (
        await admin.post(
            "/v1/campaigns",
            json={
                "name": "Winter sale",
                "timezone": "Europe/Amsterdam",
                "exit_metric": "Placed Order",
            },
        )
    ).json()
    cid = campaign["id"]
    path = (
        await admin.post(
            f"/v1/campaigns/{cid}/paths", json={"name": "All", "include_lists": [members]}
        )
    ).json()
    for at, subject in ((day1, "Sale"), (day1 + timedelta(days=1), "Last day")):
        created = await admin.post(
            f"/v1/campaigns/{cid}/paths/{path['id']}/messages",
            json={
                "channel": "email",
                "content": {
                    "subject": subject,
                    "body": "Hi! <a href='#'>unsubscribe</a>",
                    "sender": "shop@example.com",
                },
                "send_at": at.strftime("%Y-%m-%dT%H:%M"),
            },
        )
        assert created.status_code == 201, created.text
    review = (await admin.get(f"/v1/campaigns/{cid}/review")).json()
    assert review["ready"] is True, review

    scheduled = await admin.post(f"/v1/campaigns/{cid}/schedule")
    assert scheduled.status_code == 200, scheduled.text
    locked = await admin.patch(f"/v1/campaigns/{cid}", json={"exit_metric": "Active on Site"})
    assert locked.status_code == 423

    handle = world.client.get_workflow_handle(f"campaign/{cid}")
    await world.env.sleep(day1 + timedelta(minutes=1) - await world.now())
    await world.until(lambda: world.db.scalar("SELECT count(*) FROM message_outbox") == 4)
    await world.event("Placed Order", shoppers[0], "o-1", value=99)
    after_send = await admin.patch(f"/v1/campaigns/{cid}", json={"exit_metric": None})
    assert after_send.status_code == 409  # locked for good once anything was sent
    await world.env.sleep(timedelta(days=1, minutes=5))
    assert await handle.result() == "sent"

    report = (await admin.get(f"/v1/campaigns/{cid}/report")).json()
    assert report["status"] == "sent" and report["exits"] == 1
    [path_report] = report["paths"]
    first, second = path_report["messages"]
    assert (first["sent"], second["sent"]) == (4, 3)
    assert second["skipped"] == {"exited": 1}
    exits = (await admin.get(f"/v1/campaigns/{cid}/exits")).json()["data"]
    assert [e["profile_id"] for e in exits] == [shoppers[0]]


async def tomorrow_campaign(world, admin, shopper: str) -> tuple[str, dict]:
    """A draft campaign with one path (a list of `shopper`) and one email tomorrow at 9:00
    Amsterdam time; returns (campaign id, path)."""
    members = make_list(world, "Pending", shopper)
    local = (await world.now()).astimezone(ZoneInfo("Europe/Amsterdam"))
    at = (local + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    cid = (
        await admin.post("/v1/campaigns", json={"name": "Later", "timezone": "Europe/Amsterdam"})
    ).json()["id"]
    path = (
        await admin.post(f"/v1/campaigns/{cid}/paths", json={"include_lists": [members]})
    ).json()
    await admin.post(
        f"/v1/campaigns/{cid}/paths/{path['id']}/messages",
        json={
            "channel": "email",
            "send_at": at.strftime("%Y-%m-%dT%H:%M"),
            "content": {"subject": "Soon", "body": "unsubscribe", "sender": "s@x.io"},
        },
    )
    return cid, path


async def test_unscheduling_and_cancelling_stop_the_pending_sends(stack):
    world, admin = stack
    shopper = world.profile("pending@example.com")
    cid, path = await tomorrow_campaign(world, admin, shopper)
    handle = world.client.get_workflow_handle(f"campaign/{cid}")
    path_handle = world.client.get_workflow_handle(f"campaign/{cid}/path/{path['id']}")

    async def parked() -> None:
        """Until the path workflow (this run of it) sleeps on its timer."""
        for _ in range(500):
            try:
                run = await path_handle.query(QUERY_STATE, result_type=PathRun)
                if run and run.progress and run.progress[0].next_wave_at:
                    return
            except RPCError:
                pass  # not started yet
            await asyncio.sleep(0.02)
        raise AssertionError("the path workflow never parked")

    assert (await admin.post(f"/v1/campaigns/{cid}/schedule")).status_code == 200
    await parked()
    assert (await admin.post(f"/v1/campaigns/{cid}/unschedule")).status_code == 200
    assert (await admin.get(f"/v1/campaigns/{cid}")).json()["status"] == "draft"
    # The parent cancels its path children as it handles the cancellation: wait for both (a
    # schedule while the parent still closes is a 409 "still running, try again shortly").
    for workflow in (path_handle, handle):
        for _ in range(500):
            if (await workflow.describe()).status.name != "RUNNING":
                break
            await asyncio.sleep(0.02)
        assert (await workflow.describe()).status.name == "CANCELED"

    # Scheduled again, then cancelled: the timer never fires, nothing is sent.
    assert (await admin.post(f"/v1/campaigns/{cid}/schedule")).status_code == 200
    path_handle = world.client.get_workflow_handle(f"campaign/{cid}/path/{path['id']}")
    await parked()
    assert (await admin.post(f"/v1/campaigns/{cid}/cancel")).status_code == 200
    await world.env.sleep(timedelta(days=2))
    assert (await handle.describe()).status.name == "CANCELED"
    assert world.sent(shopper) == []
    campaign = (await admin.get(f"/v1/campaigns/{cid}")).json()
    assert (campaign["status"], campaign["cancel_reason"]) == ("cancelled", "operator")
