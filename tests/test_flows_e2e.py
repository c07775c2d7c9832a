"""A flow the way a user drives it: the HTTP API in front, Temporal and a worker behind."""

from datetime import timedelta

import httpx
import pytest

from api.app import create_app
from herald.core.config import Settings
from tests.conftest import serve
from tests.flow_world import start_world

DAY = timedelta(days=1)


@pytest.fixture
async def stack(skipping_env, db, keys):
    world, worker = await start_world(skipping_env, db)
    settings = Settings(
        database_url=db.url,
        temporal_address=skipping_env.client.service_client.config.target_host,
        task_queue=world.settings.task_queue,
        api_key_cache_seconds=0,
    )
    app = create_app(settings, engine=db.engine)
    async with worker:
        with serve(app) as base_url:
            admin = httpx.AsyncClient(
                base_url=base_url, headers={"Authorization": f"Bearer {keys.private}"}, timeout=30
            )
            writer = httpx.AsyncClient(
                base_url=base_url, headers={"Authorization": f"Bearer {keys.write}"}, timeout=30
            )
            async with admin, writer:
                yield world, admin, writer


FLOW = {
    "name": "Abandoned checkout",
    "status": "manual",
    "trigger": {"type": "metric", "metric": "Started Checkout"},
    "exit_metric": "Placed Order",
    "steps": [
        {
            "id": "reminder",
            "type": "message",
            "channel": "email",
            "content": {"subject": "Your cart", "body": "Hi {{ profile.first_name }}"},
            "next": "wait",
        },
        {"id": "wait", "type": "time_delay", "amount": 1, "unit": "days", "next": "follow-up"},
        {
            "id": "follow-up",
            "type": "message",
            "channel": "email",
            "content": {"subject": "Still thinking?", "body": "10% off"},
            "status": "live",
        },
    ],
}


async def customer(admin: httpx.AsyncClient, email: str, name: str) -> str:
    profile = (
        await admin.post("/v1/profiles/upsert", json={"email": email, "first_name": name})
    ).json()
    response = await admin.put(
        f"/v1/profiles/{profile['id']}/consent/email", json={"status": "subscribed"}
    )
    assert response.status_code == 200, response.text
    return profile["id"]


async def test_operating_a_flow_through_the_api(stack):
    world, admin, writer = stack
    created = await admin.post("/v1/flows", json=FLOW)
    assert created.status_code == 201, created.text
    flow_id = created.json()["id"]
    ada = await customer(admin, "ada@example.com", "Ada")
    bob = await customer(admin, "bob@example.com", "Bob")

    for email, cart in (("ada@example.com", "cart-a"), ("bob@example.com", "cart-b")):
        accepted = await writer.post(
            "/v1/events",
            json={"metric": "Started Checkout", "profile": {"email": email}, "unique_id": cart},
        )
        assert accepted.status_code == 202
    await world.route()

    listed = (await admin.get(f"/v1/flows/{flow_id}/enrollments")).json()["data"]
    assert {(e["profile_id"], e["status"]) for e in listed} == {
        (ada, "running"),
        (bob, "running"),
    }
    # Manual flow: both reminders wait for an operator.
    queue = (await admin.get(f"/v1/flows/{flow_id}/review-queue")).json()["data"]
    assert {(q["profile_id"], q["step_id"], q["status"]) for q in queue} == {
        (ada, "reminder", "pending"),
        (bob, "reminder", "pending"),
    }
    item = {q["profile_id"]: q["id"] for q in queue}
    assert (await admin.post(f"/v1/review-queue/{item[ada]}/approve")).status_code == 200
    assert (await admin.post(f"/v1/review-queue/{item[bob]}/reject")).status_code == 200
    again = await admin.post(f"/v1/review-queue/{item[bob]}/approve")
    assert again.status_code == 409
    await world.settle()

    outbox = (await admin.get("/v1/outbox", params={"profile_id": ada})).json()["data"]
    assert [(m["subject"], m["body"]) for m in outbox] == [("Your cart", "Hi Ada")]
    assert (await admin.get("/v1/outbox", params={"profile_id": bob})).json()["data"] == []

    ada_run = next(e["workflow_id"] for e in listed if e["profile_id"] == ada)
    detail = (await admin.get(f"/v1/enrollments/{ada_run}")).json()
    assert [(t["step_id"], t["outcome"]) for t in detail["timeline"]] == [
        ("reminder", "entered"),
        ("reminder", "queued"),
        ("reminder", "processed"),
    ]
    assert detail["live"]["current_step"] == "wait"
    assert detail["live"]["waiting_for"] == "timer"
    assert detail["live"]["next_wake_at"]

    bob_run = next(e["workflow_id"] for e in listed if e["profile_id"] == bob)
    cancelled = await admin.post(f"/v1/enrollments/{bob_run}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    await world.settle()
    assert (await admin.post(f"/v1/enrollments/{bob_run}/cancel")).status_code == 409

    # Ada orders: her enrollment exits before the follow-up.
    await writer.post(
        "/v1/events",
        json={"metric": "Placed Order", "profile": {"email": "ada@example.com"}, "value": 42},
    )
    await world.route()
    await world.advance(2 * DAY)
    runs = {
        e["profile_id"]: (e["status"], e["exit_reason"])
        for e in (await admin.get(f"/v1/flows/{flow_id}/enrollments")).json()["data"]
    }
    assert runs == {ada: ("exited", "converted"), bob: ("cancelled", "operator")}

    report = {
        s["step_id"]: s for s in (await admin.get(f"/v1/flows/{flow_id}/report")).json()["steps"]
    }
    assert report["reminder"]["queued"] == 2
    assert report["reminder"]["processed"] == 1
    assert report["reminder"]["skipped"] == {"rejected": 1}
    assert report["wait"]["exited"] == {"converted": 1, "operator": 1}

    # Editing the live flow makes version 2 for new entries.
    steps = FLOW["steps"][:1]
    steps = [{**steps[0], "next": None}]
    edited = await admin.put(
        f"/v1/flows/{flow_id}/definition",
        json={**{k: FLOW[k] for k in ("trigger",)}, "exit_metric": "Placed Order", "steps": steps},
    )
    assert edited.status_code == 200, edited.text
    assert (await admin.get(f"/v1/flows/{flow_id}")).json()["version"] == 2
