"""What the campaign crash tests share: a `herald worker` process to kill -9, and a campaign to
a bulk-written audience whose one email message is due at once."""

import asyncio
import os
import signal
import subprocess
from datetime import timedelta

from herald.campaigns.contract import (
    CampaignSettings,
    CampaignSnapshot,
    MessageSnapshot,
    PathSnapshot,
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


def start_worker(db, temporal_server, task_queue: str, **env: str) -> subprocess.Popen:
    """`herald worker` on this test's database and queue; `env` adds HERALD_* settings."""
    env = {
        **os.environ,
        **db.env(),
        "TEMPORAL_ADDRESS": temporal_server.client.service_client.config.target_host,
        "HERALD_TASK_QUEUE": task_queue,
        "HERALD_WORKER_METRICS_PORT": str(free_port()),
        "HERALD_LOG_LEVEL": "WARNING",
        **env,
    }
    return subprocess.Popen([find_binary("herald"), "worker"], env=env)


def stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(15)
    except subprocess.TimeoutExpired:
        worker.kill()


def kill_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)


def audience(db, recipients: int) -> str:
    """`recipients` subscribed profiles (pr_crash000000@example.com, ...) on one list, written
    in bulk; returns the list's id."""
    now = utcnow()
    ids = [f"pr_crash{i:06d}" for i in range(recipients)]
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


def due_campaign(db, list_id: str) -> CampaignSnapshot:
    """A scheduled campaign with one path to the list and one email message due already."""
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
    return CampaignSnapshot(
        settings=CampaignSettings(campaign_id=campaign_id, name="Crash", path_order=[path_id]),
        paths=[
            PathSnapshot(
                id=path_id, position=0, name="All", include_lists=[list_id], messages=[message]
            )
        ],
    )


async def wait_for(condition, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
