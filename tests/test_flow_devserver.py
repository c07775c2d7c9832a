"""Operators' view on the real dev server: find an enrollment by search attributes, query it."""

import asyncio
import json
import uuid

from herald.cli.devstack import find_binary
from herald.core.config import Settings
from herald.ingest.events import MetricDirectory, ingest
from models.events import EventIn
from tests.flow_world import FlowWorld
from tests.test_flow_scenarios import chain, email
from worker import build_worker, ensure_router
from workflows.router import RouterState


async def temporal_cli(address: str, *args: str) -> str:
    """The operator's CLI; async, so the worker on this event loop can answer its query."""
    proc = await asyncio.create_subprocess_exec(
        find_binary("temporal"),
        *args,
        "--address",
        address,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_an_enrollment_is_found_by_flow_and_profile_and_answers_its_query(
    temporal_server, db
):
    settings = Settings(database_url=db.url, task_queue=f"flows-{uuid.uuid4().hex[:8]}")
    address = temporal_server.client.service_client.config.target_host
    world = FlowWorld(temporal_server, db, settings)
    flow_id = world.flow(
        chain(
            {
                "trigger": {"type": "metric", "metric": "Started Checkout"},
                "steps": [
                    email("reminder", "Your cart misses you"),
                    {"id": "wait", "type": "time_delay", "amount": 3, "unit": "days"},
                    email("last-call", "Last call"),
                ],
            }
        )
    )
    shopper = world.profile("ops@example.com")
    router_id = f"herald/router-{uuid.uuid4().hex[:8]}"
    worker = build_worker(temporal_server.client, settings, db.engine)
    async with worker:
        # The real router workflow routes the event, as in production.
        await ensure_router(temporal_server.client, settings, router_id, RouterState())
        event = EventIn.model_validate(
            {
                "metric": "Started Checkout",
                "profile": {"email": "ops@example.com"},
                "unique_id": "cart-ops",
            }
        )
        ingest(db.engine, MetricDirectory(), [event], "test")
        workflow_id = f"flow/{flow_id}/{shopper}/cart-ops"
        query = f'HeraldFlowId="{flow_id}" AND HeraldProfileId="{shopper}" AND HeraldStep="wait"'
        listed = []
        for _ in range(200):  # visibility is eventually consistent
            listed = json.loads(
                await temporal_cli(address, "workflow", "list", "--query", query) or "[]"
            )
            if listed:
                break
            await asyncio.sleep(0.1)
        assert [w["execution"]["workflowId"] for w in listed] == [workflow_id]
        assert listed[0]["type"]["name"] == "FlowEnrollment"

        state = json.loads(
            await temporal_cli(
                address, "workflow", "query", "--workflow-id", workflow_id, "--name", "state"
            )
        )
        answer = state["queryResult"][0]
        assert answer["current_step"] == "wait"
        assert answer["waiting_for"] == "timer"
        assert answer["path"] == ["reminder", "wait"]
        assert answer["next_wake_at"]

        await temporal_server.client.get_workflow_handle(workflow_id).terminate("test done")
        await temporal_server.client.get_workflow_handle(router_id).terminate("test done")
