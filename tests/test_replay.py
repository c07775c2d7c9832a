"""Saved workflow histories replay against today's workflow code (determinism across deploys).

tests/histories/ holds histories recorded from real runs of every workflow type the worker runs
(`worker.WORKFLOWS`). A change to a workflow that would break running executions (a new activity
call, a reordered step) fails this test; guard such a change with `workflow.patched()` and record
new histories beside the old ones (README: "Shipping a workflow change"):

    HERALD_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_replay.py tests/test_cancellation.py \
        -k record
"""

import asyncio
import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from herald.campaigns.contract import CampaignSettings, PathSnapshot, path_workflow_id
from herald.cli.devstack import find_binary
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.flows.contract import SIGNAL_APPROVE
from models.lists import ProfileList
from tests.flow_world import start_world
from tests.test_campaign_scenarios import (
    AMSTERDAM,
    make_list,
    message,
    one_path,
    schedule,
    settle_campaign,
    store,
)
from tests.test_flow_scenarios import chain, email
from tests.test_segment_flows import BROWSED_RECENTLY, DAY, live_segment, seed_order_history
from worker import WORKFLOWS
from workflows.date_triggers import DateTriggerWorkflow
from workflows.rfm import RfmWorkflow
from workflows.segment_refresh import SegmentRefreshWorkflow

HISTORIES = Path(__file__).parent / "histories"
RECORDING = os.environ.get("HERALD_RECORD_HISTORIES") == "1"

# One flow that walks every kind of step the enrollment workflow knows.
EVERY_STEP = {
    "trigger": {"type": "metric", "metric": "Started Checkout"},
    "exit_metric": "Placed Order",
    "steps": [
        {
            "id": "is-new",
            "type": "conditional_split",
            "conditions": [
                {
                    "type": "metric_count",
                    "metric": "Started Checkout",
                    "operator": "equals",
                    "count": 1,
                }
            ],
            "yes": "big-cart",
            "no": "exit",
        },
        {
            "id": "big-cart",
            "type": "trigger_split",
            "conditions": [{"property": "$value", "operator": "gt", "value": 100}],
            "yes": "ab",
            "no": "ab",
        },
        {
            "id": "ab",
            "type": "random_split",
            "branches": [{"weight": 1, "next": "tag"}, {"weight": 1, "next": "tag"}],
        },
        {"id": "tag", "type": "update_profile", "properties": {"cart_flow": True}},
        {"id": "listed", "type": "add_to_list", "list_id": "li_replay"},
        email("reminder", "Hi {{ profile.email }}", status="manual"),
        {"id": "wait", "type": "time_delay", "amount": 1, "unit": "days"},
        {
            "id": "viewed",
            "type": "wait_for_event",
            "metric": "Viewed Product",
            "timeout_amount": 2,
            "timeout_unit": "days",
            "on_event": "last-call",
            "on_timeout": "last-call",
        },
        email("last-call", "Last call", smart_sending=False),
        {"id": "exit", "type": "exit"},
    ],
}


def saved_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


@pytest.mark.skipif(not saved_histories(), reason="no saved histories")
@pytest.mark.parametrize("path", saved_histories(), ids=lambda p: p.stem)
async def test_saved_history_replays_on_current_code(path: Path):
    history = await asyncio.to_thread(load, path)
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


def test_every_workflow_type_has_a_saved_history():
    # The worker's list says what must be covered, each history's first event what it covers:
    # registering a workflow without recording a history of it fails here, whatever the file name.
    required = {workflow._Definition.must_from_class(cls).name for cls in WORKFLOWS}
    recorded = {
        load(p).events[0].workflow_execution_started_event_attributes.workflow_type.name
        for p in saved_histories()
    }
    assert required - recorded == set(), "workflow types without a saved history"


async def save(name: str, handle: WorkflowHandle) -> None:
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


@pytest.mark.skipif(not RECORDING, reason="set HERALD_RECORD_HISTORIES=1 to record")
async def test_record_flow_enrollment_histories(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        with session_scope(db.engine) as session:
            session.add(ProfileList(id="li_replay", name="Replay"))
        world.flow(chain(EVERY_STEP))
        walker = world.profile("walker@example.com")
        quitter = world.profile("quitter@example.com")
        await world.event("Started Checkout", walker, "cart-w", value=150)
        await world.event("Started Checkout", quitter, "cart-q", value=20)
        for profile in (walker, quitter):
            [(workflow_id, *_)] = world.enrollments(profile)
            await world.client.get_workflow_handle(workflow_id).signal(SIGNAL_APPROVE, "reminder")
        await world.settle()
        await world.advance(timedelta(days=1))
        await world.event("Viewed Product", walker, "view-w")
        await world.event("Placed Order", quitter, "order-q")
        await world.advance(timedelta(days=3))
        HISTORIES.mkdir(exist_ok=True)
        for name, profile in (("completed", walker), ("converted", quitter)):
            [(workflow_id, status, *_)] = world.enrollments(profile)
            history = await world.client.get_workflow_handle(workflow_id).fetch_history()
            (HISTORIES / f"flow_enrollment-{name}.json").write_text(history.to_json())


@pytest.mark.skipif(not RECORDING, reason="set HERALD_RECORD_HISTORIES=1 to record")
async def test_record_router_and_date_trigger_histories(temporal_server, db):
    from herald.core.config import Settings
    from herald.ingest.events import MetricDirectory, ingest
    from models.events import EventIn
    from worker import build_worker, ensure_router
    from workflows.router import RouterState

    client = temporal_server.client
    settings = Settings(
        database_url=db.url,
        task_queue=f"replay-{uuid.uuid4().hex[:8]}",
        router_batch_size=5,
        router_poll_seconds=0.2,
    )
    HISTORIES.mkdir(exist_ok=True)
    async with build_worker(client, settings, db.engine):
        events = [
            EventIn.model_validate(
                {
                    "metric": "Viewed Product",
                    "profile": {"external_id": f"r{i}"},
                    "unique_id": f"v{i}",
                }
            )
            for i in range(12)
        ]
        ingest(db.engine, MetricDirectory(), events, "test")
        router_id = f"herald/router-replay-{uuid.uuid4().hex[:6]}"
        await ensure_router(client, settings, router_id, RouterState(max_batches_per_run=3))
        handle = client.get_workflow_handle(router_id)
        first_run = (await handle.describe()).run_id
        while (await handle.describe()).run_id == first_run:  # noqa: ASYNC110 (polling a server)
            await asyncio.sleep(0.1)
        history = await client.get_workflow_handle(router_id, run_id=first_run).fetch_history()
        (HISTORIES / "router-continue_as_new.json").write_text(history.to_json())
        await handle.terminate("recorded")

        dates = await client.start_workflow(
            DateTriggerWorkflow.run,
            id=f"herald/date-triggers-replay-{uuid.uuid4().hex[:6]}",
            task_queue=settings.task_queue,
        )
        await dates.result()
        history = await dates.fetch_history()
        (HISTORIES / "date_triggers-hourly.json").write_text(history.to_json())


@pytest.mark.skipif(not RECORDING, reason="set HERALD_RECORD_HISTORIES=1 to record")
async def test_record_campaign_histories(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        local_now = (await world.now()).astimezone(AMSTERDAM)
        day1 = (local_now + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
        buyer = world.profile("buyer@example.com")
        customers = make_list(world, "Customers", buyer, world.profile("reader@example.com"))
        fans = make_list(world, "Fans", *(world.profile(f"fan{i}@example.com") for i in range(4)))
        last_call = message("email", day1.replace(hour=13), "Last")
        ordinary = one_path(customers, message("email", day1, "Sale"), last_call)
        staggered = PathSnapshot(
            id=new_id("pa"),
            position=1,
            name="Fans",
            include_lists=[fans],
            messages=[message("email", day1, "Drop", stagger_percent=50)],  # two hourly waves
        )
        snapshot = store(
            world,
            CampaignSettings(
                campaign_id=new_id("cp"),
                name="Replay",
                timezone="Europe/Amsterdam",
                exit_metric="Placed Order",
            ),
            [ordinary, staggered],
        )
        handle = await schedule(world, snapshot)
        await settle_campaign(world, snapshot)
        await world.env.sleep(day1 + timedelta(minutes=1) - await world.now())
        await settle_campaign(world, snapshot)
        await world.event("Placed Order", buyer, "order-b", value=60)  # the paths get `exits`
        for at in (day1.replace(hour=10), day1.replace(hour=13)):  # second wave, last call
            await world.env.sleep(at + timedelta(minutes=1) - await world.now())
        assert await handle.result() == "sent"

        nobody = make_list(world, "Nobody")
        empty = store(
            world,
            CampaignSettings(campaign_id=new_id("cp"), name="Empty", timezone="Europe/Amsterdam"),
            [one_path(nobody, message("email", day1, "Hi"))],
        )
        empty_handle = await schedule(world, empty)
        assert await empty_handle.result() == "cancelled"

        await save("campaign-sent", handle)
        await save("campaign-no_recipients", empty_handle)
        campaign_id = snapshot.settings.campaign_id
        for name, path in (("two_messages", ordinary), ("staggered", staggered)):
            path_handle = world.client.get_workflow_handle(path_workflow_id(campaign_id, path.id))
            await save(f"campaign_path-{name}", path_handle)


@pytest.mark.skipif(not RECORDING, reason="set HERALD_RECORD_HISTORIES=1 to record")
async def test_record_campaign_path_continue_as_new_histories(db):
    # A path continues-as-new when the server suggests it (or after PAGES_PER_RUN pages). A dev
    # server that suggests it after 20 events makes a two-message path do so before its second
    # message; the suggestion is in the history, so the replay needs no knob.
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        data_converter=pydantic_data_converter,
        dev_server_extra_args=[
            "--dynamic-config-value",
            "limit.historyCount.suggestContinueAsNew=20",
        ],
    )
    try:
        world, worker = await start_world(env, db)
        async with worker:
            past = await world.now() - timedelta(minutes=1)  # both messages go at once
            members = make_list(
                world, "Customers", world.profile("a@example.com"), world.profile("b@example.com")
            )
            path = one_path(members, *(message("email", past, body) for body in ("First", "Next")))
            snapshot = store(world, CampaignSettings(campaign_id=new_id("cp"), name="Long"), [path])
            assert await (await schedule(world, snapshot)).result() == "sent"
            workflow_id = path_workflow_id(snapshot.settings.campaign_id, path.id)
            last = world.client.get_workflow_handle(workflow_id)
            started = (
                (await last.fetch_history()).events[0].workflow_execution_started_event_attributes
            )
            first_run = started.continued_execution_run_id
            assert first_run, "the path did not continue as new"
            await save(
                "campaign_path-continue_as_new",
                world.client.get_workflow_handle(workflow_id, run_id=first_run),
            )
            await save("campaign_path-continued", last)
    finally:
        await env.shutdown()


@pytest.mark.skipif(not RECORDING, reason="set HERALD_RECORD_HISTORIES=1 to record")
async def test_record_rfm_and_segment_refresh_histories(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        seed_order_history(world, await world.now())
        # Started directly, without arguments, as the daily schedule starts it.
        rfm = await world.client.start_workflow(
            RfmWorkflow.run,
            id=f"herald/rfm-replay-{uuid.uuid4().hex[:6]}",
            task_queue=world.settings.task_queue,
        )
        assert (await rfm.result())["status"] == "completed"
        await save("rfm-daily", rfm)

        await live_segment(world, BROWSED_RECENTLY)
        await world.event("Viewed Product", world.profile("browser@example.com"))
        await world.advance(3 * DAY)  # out of the segment's window: the refresh removes them
        refresh = await world.client.start_workflow(
            SegmentRefreshWorkflow.run,
            id=f"herald/segment-refresh-replay-{uuid.uuid4().hex[:6]}",
            task_queue=world.settings.task_queue,
        )
        assert (await refresh.result()).removed == 1
        await save("segment_refresh-window_passed", refresh)
