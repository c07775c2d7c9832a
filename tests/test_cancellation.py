"""Stopping work: deleting a flow, cancelling an enrollment or a campaign, deleting a profile.

The database says what is cancelled; Temporal must follow. The API asks each workflow to cancel
(the enrollment workflow closes its row and timeline as it handles that), and the router's
periodic reconcile catches up whatever the API could not do: Temporal unreachable, a crash
between commit and call, a workflow that ignores the request (terminated after the grace period),
or a workflow that closed while its row still says running.
"""

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from api.app import create_app
from herald.campaigns.contract import QUERY_STATE, PathRun
from herald.core.config import Settings
from herald.flows.contract import SIGNAL_EXIT
from tests.conftest import free_port, serve
from tests.flow_world import FlowWorld, start_world
from tests.test_campaigns_e2e import tomorrow_campaign
from tests.test_flow_scenarios import chain, email
from worker import build_worker

THREE_DAYS = {"id": "wait", "type": "time_delay", "amount": 3, "unit": "days"}
WELCOME = chain(
    {
        "trigger": {"type": "metric", "metric": "Signed Up"},
        "steps": [email("hello", "Welcome"), THREE_DAYS, email("later", "Still there?")],
    }
)


# ---- fixtures and helpers -----------------------------------------------------------------------


def _app(db, temporal_address: str, task_queue: str):
    return create_app(
        Settings(
            database_url=db.url,
            temporal_address=temporal_address,
            task_queue=task_queue,
            api_key_cache_seconds=0,
            search_attributes=False,
        ),
        engine=db.engine,
    )


@pytest.fixture
async def stack(skipping_env, db, keys):
    """Time-skipping Temporal, a worker, and the API twice: one that reaches Temporal
    (`admin`) and one whose Temporal address has nothing listening (`offline`)."""
    world, worker = await start_world(skipping_env, db)
    queue = world.settings.task_queue
    online = _app(db, skipping_env.client.service_client.config.target_host, queue)
    unreachable = _app(db, f"127.0.0.1:{free_port()}", queue)
    headers = {"Authorization": f"Bearer {keys.private}"}
    async with worker:
        with serve(online) as online_url, serve(unreachable) as offline_url:
            async with (
                httpx.AsyncClient(base_url=online_url, headers=headers, timeout=30) as admin,
                httpx.AsyncClient(base_url=offline_url, headers=headers, timeout=30) as offline,
            ):
                yield SimpleNamespace(world=world, worker=worker, admin=admin, offline=offline)


async def reconcile(world: FlowWorld, later: timedelta = timedelta(0)) -> None:
    """One pass of the router's periodic reconcile, due now, at the simulated time (+ later)."""
    now = await world.now() + later
    world.flow_handler.clock = lambda: now
    world.flow_handler._last_reconcile = 0.0
    await asyncio.to_thread(world.router.route_once)


async def closed(world: FlowWorld, workflow_id: str, within: float = 20.0):
    """The workflow's status once it is no longer running (fails if it still runs)."""
    handle = world.client.get_workflow_handle(workflow_id)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        status = (await handle.describe()).status
        if status != WorkflowExecutionStatus.RUNNING:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{workflow_id} is still running")
        await asyncio.sleep(0.05)


async def until(condition, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


def enrollment(world: FlowWorld, workflow_id: str) -> tuple:
    return tuple(
        world.db.rows(
            "SELECT status, exit_reason FROM flow_enrollment WHERE workflow_id = :w",
            w=workflow_id,
        )[0]
    )


def exits(world: FlowWorld, workflow_id: str) -> list[tuple]:
    """The timeline's exit lines: (step, reason)."""
    return [
        tuple(r)
        for r in world.db.rows(
            "SELECT step_id, reason FROM enrollment_step "
            "WHERE workflow_id = :w AND outcome = 'exited'",
            w=workflow_id,
        )
    ]


async def enrolled(world: FlowWorld, flow_id: str, profile_id: str, key: str) -> str:
    await world.event("Signed Up", profile_id, unique_id=key)
    workflow_id = f"flow/{flow_id}/{profile_id}/{key}"
    assert enrollment(world, workflow_id) == ("running", None)
    return workflow_id


# ---- A: cancelling stops the workflows ----------------------------------------------------------


@pytest.mark.parametrize("how", ["delete_flow", "cancel_enrollment"])
async def test_an_enrollment_retrying_a_webhook_stops_when_its_flow_is_deleted_or_it_is_cancelled(
    temporal_server, db, keys, how
):
    # Real time (dev server): the receiver is down, so the step retries for up to a day; an exit
    # signal alone is only seen once the activity gives up.
    settings = Settings(
        database_url=db.url,
        task_queue=f"cancel-{free_port()}",
        search_attributes=False,
        webhook_allow_hosts=["127.0.0.1/32"],
    )
    world = FlowWorld(temporal_server, db, settings)
    flow_id = world.flow(
        chain(
            {
                "trigger": {"type": "metric", "metric": "Signed Up"},
                "steps": [
                    {"id": "crm", "type": "webhook", "url": f"https://127.0.0.1:{free_port()}/"},
                    email("hello", "Welcome"),
                ],
            }
        )
    )
    ada = world.profile("ada@example.com")
    app = _app(db, temporal_server.client.service_client.config.target_host, settings.task_queue)
    async with build_worker(temporal_server.client, settings, db.engine):
        with serve(app) as base_url:
            headers = {"Authorization": f"Bearer {keys.private}"}
            async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as api:
                workflow_id = await enrolled(world, flow_id, ada, "signup-1")
                assert (await world.state(workflow_id)).waiting_for == "webhook"
                if how == "delete_flow":
                    response = await api.delete(f"/v1/flows/{flow_id}")
                    assert response.status_code == 204, response.text
                    reason = "flow_deleted"
                else:
                    response = await api.post(f"/v1/enrollments/{workflow_id}/cancel")
                    assert response.status_code == 200, response.text
                    reason = "operator"
                assert await closed(world, workflow_id) == WorkflowExecutionStatus.CANCELED
    assert enrollment(world, workflow_id) == ("cancelled", reason)
    assert exits(world, workflow_id) == [("crm", reason)]
    assert world.sent(ada) == []


async def test_a_flow_deleted_while_temporal_is_unreachable_is_stopped_by_the_reconcile(stack):
    world = stack.world
    flow_id = world.flow(WELCOME)
    ada = world.profile("ada@example.com")
    workflow_id = await enrolled(world, flow_id, ada, "signup-1")

    # The DB commits, Temporal cannot be told: the call still succeeds.
    assert (await stack.offline.delete(f"/v1/flows/{flow_id}")).status_code == 204
    assert enrollment(world, workflow_id) == ("cancelled", "flow_deleted")
    assert (await world.state(workflow_id)).status == "running"

    await world.env.sleep(timedelta(minutes=2))  # past the API's own attempt
    await reconcile(world)
    assert await closed(world, workflow_id) == WorkflowExecutionStatus.CANCELED
    assert exits(world, workflow_id) == [("wait", "flow_deleted")]
    assert [s for s, _, _ in world.sent(ada)] == ["hello"]


async def test_a_cancelled_enrollment_whose_workflow_never_stops_is_terminated_after_grace(
    stack,
):
    world = stack.world
    flow_id = world.flow(WELCOME)
    ada = world.profile("ada@example.com")
    workflow_id = await enrolled(world, flow_id, ada, "signup-1")
    await stack.worker.shutdown()  # no worker handles the cancellation request

    cancelled = await stack.offline.post(f"/v1/enrollments/{workflow_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.headers["herald-temporal"] == "pending_reconcile"
    await world.env.sleep(timedelta(minutes=2))
    await reconcile(world)  # asks it to cancel; nobody answers
    handle = world.client.get_workflow_handle(workflow_id)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    # Ten minutes on, past the grace period (the reconcile's clock: no worker moves time).
    await reconcile(world, later=timedelta(minutes=10))
    assert await closed(world, workflow_id) == WorkflowExecutionStatus.TERMINATED
    assert enrollment(world, workflow_id) == ("cancelled", "operator")
    # Written by the reconcile, at the last step the database knows of.
    assert exits(world, workflow_id) == [("hello", "operator")]


async def test_a_running_enrollment_whose_workflow_was_terminated_by_hand_is_closed(stack):
    world = stack.world
    flow_id = world.flow(WELCOME)
    ada = world.profile("ada@example.com")
    workflow_id = await enrolled(world, flow_id, ada, "signup-1")
    await world.client.get_workflow_handle(workflow_id).terminate(reason="by hand")

    await world.env.sleep(timedelta(minutes=2))
    await reconcile(world)
    await until(lambda: enrollment(world, workflow_id)[0] != "running")
    assert enrollment(world, workflow_id) == ("failed", "workflow_terminated")
    assert exits(world, workflow_id) == [("hello", "workflow_terminated")]


async def test_a_campaign_cancelled_while_temporal_is_unreachable_is_stopped_by_the_reconcile(
    stack,
):
    world, admin = stack.world, stack.admin
    shopper = world.profile("pending@example.com")
    cid, path = await tomorrow_campaign(world, admin, shopper)
    assert (await admin.post(f"/v1/campaigns/{cid}/schedule")).status_code == 200
    path_handle = world.client.get_workflow_handle(f"campaign/{cid}/path/{path['id']}")
    for _ in range(500):  # until the path workflow sleeps on its timer
        try:
            run = await path_handle.query(QUERY_STATE, result_type=PathRun)
            if run and run.progress and run.progress[0].next_wave_at:
                break
        except RPCError:
            pass  # not started yet
        await asyncio.sleep(0.02)

    cancelled = await stack.offline.post(f"/v1/campaigns/{cid}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.headers["herald-temporal"] == "pending_reconcile"
    handle = world.client.get_workflow_handle(f"campaign/{cid}")
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    await world.env.sleep(timedelta(minutes=2))
    await reconcile(world)
    assert await closed(world, f"campaign/{cid}") == WorkflowExecutionStatus.CANCELED
    assert await closed(world, f"campaign/{cid}/path/{path['id']}") in (
        WorkflowExecutionStatus.CANCELED,
        WorkflowExecutionStatus.TERMINATED,
    )
    assert world.sent(shopper) == []


# ---- B: deleting a profile that was in a flow ---------------------------------------------------


async def test_deleting_a_profile_in_a_flow_cancels_its_enrollment_and_keeps_anonymous_counts(
    stack,
):
    world, admin = stack.world, stack.admin
    flow_id = world.flow(WELCOME)
    ada = world.profile("ada@example.com")
    bob = world.profile("bob@example.com")
    ada_run = await enrolled(world, flow_id, ada, "signup-a")
    bob_run = await enrolled(world, flow_id, bob, "signup-b")
    assert [s for s, _, _ in world.sent(ada)] == ["hello"]
    before = (await admin.get(f"/v1/flows/{flow_id}/report")).json()

    deleted = await admin.delete(f"/v1/profiles/{ada}")
    assert deleted.status_code == 204, deleted.text

    assert (await admin.get(f"/v1/profiles/{ada}")).status_code == 404
    assert enrollment(world, ada_run) == ("cancelled", "profile_deleted")
    assert await closed(world, ada_run) == WorkflowExecutionStatus.CANCELED
    assert exits(world, ada_run) == [("wait", "profile_deleted")]
    assert enrollment(world, bob_run) == ("running", None)
    # The history stays for counts, without the person: no address, subject or event data.
    assert world.db.rows(
        "SELECT step_id, status, to_address, subject FROM delivery WHERE profile_id = :p", p=ada
    ) == [("hello", "sent", None, None)]
    assert world.db.scalar("SELECT count(*) FROM message_outbox WHERE profile_id = :p", p=ada) == 0
    listed = (
        await admin.get(f"/v1/flows/{flow_id}/enrollments", params={"profile_id": ada})
    ).json()["data"]
    assert [(e["status"], e["trigger"].get("properties")) for e in listed] == [("cancelled", None)]
    after = (await admin.get(f"/v1/flows/{flow_id}/report")).json()
    hello = {s["step_id"]: s for s in after["steps"]}["hello"]
    assert hello == {s["step_id"]: s for s in before["steps"]}["hello"]
    assert hello["deliveries"] == {"sent": 2}

    # Deleting it again: it is gone.
    assert (await admin.delete(f"/v1/profiles/{ada}")).status_code == 404


# ---- a saved history of the cancellation path (replayed by tests/test_replay.py) ----------------


@pytest.mark.skipif(
    os.environ.get("HERALD_RECORD_HISTORIES") != "1",
    reason="set HERALD_RECORD_HISTORIES=1 to record",
)
async def test_record_cancelled_enrollment_history(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        flow_id = world.flow(WELCOME)
        ada = world.profile("ada@example.com")
        workflow_id = await enrolled(world, flow_id, ada, "signup-1")
        handle = world.client.get_workflow_handle(workflow_id)
        await handle.signal(SIGNAL_EXIT, "operator")  # what the API sends before it cancels
        await handle.cancel()
        assert await closed(world, workflow_id) == WorkflowExecutionStatus.CANCELED
        history = await handle.fetch_history()
    path = Path(__file__).parent / "histories" / "flow_enrollment-cancelled.json"
    path.write_text(history.to_json())
