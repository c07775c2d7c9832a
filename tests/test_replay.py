"""Saved workflow histories replay against today's workflow code (determinism across deploys).

tests/histories/ holds histories recorded from real runs of every workflow type. A change to a
workflow that would break running executions (a new activity call, a reordered step) fails this
test; guard such a change with `workflow.patched()` and record new histories beside the old ones:

    HERALD_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_replay.py -k record
"""

import asyncio
import os
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from herald.core.db import session_scope
from herald.flows.contract import SIGNAL_APPROVE
from models.lists import ProfileList
from tests.flow_world import start_world
from tests.test_flow_scenarios import chain, email
from workflows.date_triggers import DateTriggerWorkflow
from workflows.flow_enrollment import FlowEnrollmentWorkflow
from workflows.router import EventRouterWorkflow

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


@pytest.mark.skipif(not saved_histories(), reason="no saved histories")
@pytest.mark.parametrize("path", saved_histories(), ids=lambda p: p.stem)
async def test_saved_history_replays_on_current_code(path: Path):
    history = WorkflowHistory.from_json(path.stem, await asyncio.to_thread(path.read_text))
    replayer = Replayer(
        workflows=[FlowEnrollmentWorkflow, EventRouterWorkflow, DateTriggerWorkflow],
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)


def test_every_workflow_type_has_a_saved_history():
    kinds = {p.stem.split("-")[0] for p in saved_histories()}
    assert {"flow_enrollment", "router", "date_triggers"} <= kinds


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
    import uuid

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
