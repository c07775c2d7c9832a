"""Crash test: kill -9 the worker while a 20,000-recipient campaign is sending, then restart.

Every recipient must end with exactly one delivery and one message in the outbox.
"""

import asyncio
import os
import signal
import subprocess
import uuid
from datetime import timedelta

from herald.campaigns.contract import (
    CampaignSettings,
    CampaignSnapshot,
    MessageSnapshot,
    PathSnapshot,
    campaign_workflow_id,
)
from herald.cli.devstack import find_binary
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.flows.graph import MessageContent
from models.campaigns import Campaign, CampaignMessage, CampaignPath
from models.lists import ListMembership, ProfileList
from models.profile import Consent, Profile
from models.types import utcnow
from tests.conftest import free_port
from workflows.router import ROUTER_WORKFLOW_ID

RECIPIENTS = 20_000


def start_worker(db, temporal_server, task_queue: str) -> subprocess.Popen:
    env = {
        **os.environ,
        **db.env(),
        "TEMPORAL_ADDRESS": temporal_server.client.service_client.config.target_host,
        "HERALD_TASK_QUEUE": task_queue,
        "HERALD_WORKER_METRICS_PORT": str(free_port()),
        "HERALD_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([find_binary("herald"), "worker"], env=env)


def audience(db) -> str:
    """20,000 subscribed profiles on one list, written in bulk."""
    now = utcnow()
    ids = [f"pr_crash{i:06d}" for i in range(RECIPIENTS)]
    list_id = new_id("li")
    with db.engine.begin() as conn:
        conn.execute(
            Profile.__table__.insert(),
            [
                {
                    "id": p,
                    "email": f"{p}@example.com",
                    "push_tokens": [],
                    "properties": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for p in ids
            ],
        )
        conn.execute(
            Consent.__table__.insert(),
            [
                {
                    "profile_id": p,
                    "channel": "email",
                    "status": "subscribed",
                    "source": "test",
                    "updated_at": now,
                }
                for p in ids
            ],
        )
        conn.execute(
            ProfileList.__table__.insert(),
            [
                {
                    "id": list_id,
                    "name": "Crash",
                    "description": "",
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        conn.execute(
            ListMembership.__table__.insert(),
            [{"list_id": list_id, "profile_id": p, "added_at": now} for p in ids],
        )
    return list_id


def sent_count(db) -> int:
    return db.scalar("SELECT count(*) FROM message_outbox")


async def wait_for(condition, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_killed_worker_sends_every_campaign_message_exactly_once(temporal_server, db):
    list_id = audience(db)
    campaign_id, path_id = new_id("cp"), new_id("pa")
    # A send time already passed: the path sends at once (the API refuses such times; the
    # workflow simply does not wait).
    at = (utcnow() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    message = MessageSnapshot(
        id=new_id("cm"),
        channel="email",
        content=MessageContent(subject="Drop", body="Hi {{ profile.email }}", sender="s@x.io"),
        send_at_local=at,
        smart_sending=False,
    )
    with session_scope(db.engine) as session:
        session.add(Campaign(id=campaign_id, name="Crash", status="scheduled"))
        session.flush()
        session.add(
            CampaignPath(
                id=path_id, campaign_id=campaign_id, position=0, name="All", include_lists=[list_id]
            )
        )
        session.flush()
        session.add(
            CampaignMessage(
                id=message.id,
                campaign_id=campaign_id,
                path_id=path_id,
                position=0,
                channel="email",
                content=message.content.model_dump(),
                send_at_local=at,
                status="scheduled",
            )
        )
    snapshot = CampaignSnapshot(
        settings=CampaignSettings(campaign_id=campaign_id, name="Crash", path_order=[path_id]),
        paths=[
            PathSnapshot(
                id=path_id, position=0, name="All", include_lists=[list_id], messages=[message]
            )
        ],
    )
    task_queue = f"campaign-crash-{uuid.uuid4()}"
    client = temporal_server.client
    worker = start_worker(db, temporal_server, task_queue)
    try:
        handle = await client.start_workflow(
            "Campaign", snapshot, id=campaign_workflow_id(campaign_id), task_queue=task_queue
        )
        await wait_for(lambda: sent_count(db) >= 3_000, 120, "sending to start")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert 0 < sent_count(db) < RECIPIENTS, "the kill must land while sending is under way"

        worker = start_worker(db, temporal_server, task_queue)
        assert await asyncio.wait_for(handle.result(), 180) == "sent"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        # `herald worker` started the shared router on this test's queue: leave the server clean.
        await client.get_workflow_handle(ROUTER_WORKFLOW_ID).terminate("test done")

    assert db.scalar("SELECT count(*) FROM delivery") == RECIPIENTS
    assert db.scalar("SELECT count(DISTINCT idempotency_key) FROM delivery") == RECIPIENTS
    assert db.scalar("SELECT count(DISTINCT profile_id) FROM delivery") == RECIPIENTS
    assert db.scalar("SELECT count(*) FROM delivery WHERE status <> 'sent'") == 0
    assert sent_count(db) == RECIPIENTS
    assert db.scalar("SELECT count(DISTINCT profile_id) FROM message_outbox") == RECIPIENTS
    assert db.scalar("SELECT status FROM campaign") == "sent"
