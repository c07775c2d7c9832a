"""Crash test: kill -9 the worker while a 20,000-recipient campaign is sending, then restart.

Every recipient must end with exactly one delivery and one message in the outbox.
"""

import asyncio
import uuid

from herald.campaigns.contract import campaign_workflow_id
from tests.crash_world import (
    audience,
    due_campaign,
    kill_worker,
    start_worker,
    stop_worker,
    wait_for,
)
from workflows.router import ROUTER_WORKFLOW_ID

RECIPIENTS = 20_000


def sent_count(db) -> int:
    return db.scalar("SELECT count(*) FROM message_outbox")


async def test_killed_worker_sends_every_campaign_message_exactly_once(temporal_server, db):
    snapshot = due_campaign(db, audience(db, RECIPIENTS))
    task_queue = f"campaign-crash-{uuid.uuid4()}"
    client = temporal_server.client
    worker = start_worker(db, temporal_server, task_queue)
    try:
        handle = await client.start_workflow(
            "Campaign",
            snapshot,
            id=campaign_workflow_id(snapshot.settings.campaign_id),
            task_queue=task_queue,
        )
        await wait_for(lambda: sent_count(db) >= 3_000, 120, "sending to start")
        kill_worker(worker)
        assert 0 < sent_count(db) < RECIPIENTS, "the kill must land while sending is under way"

        worker = start_worker(db, temporal_server, task_queue)
        assert await asyncio.wait_for(handle.result(), 180) == "sent"
    finally:
        stop_worker(worker)
        # `herald worker` started the shared router on this test's queue: leave the server clean.
        await client.get_workflow_handle(ROUTER_WORKFLOW_ID).terminate("test done")

    assert db.scalar("SELECT count(*) FROM delivery") == RECIPIENTS
    assert db.scalar("SELECT count(DISTINCT idempotency_key) FROM delivery") == RECIPIENTS
    assert db.scalar("SELECT count(DISTINCT profile_id) FROM delivery") == RECIPIENTS
    assert db.scalar("SELECT count(*) FROM delivery WHERE status <> 'sent'") == 0
    assert sent_count(db) == RECIPIENTS
    assert db.scalar("SELECT count(DISTINCT profile_id) FROM message_outbox") == RECIPIENTS
    assert db.scalar("SELECT status FROM campaign") == "sent"
