"""Crash test: kill -9 the worker while the router is mid-stream; every event is routed once."""

import os
import signal
import subprocess
import time
import uuid

import httpx
import pytest

from herald.cli.devstack import find_binary
from herald.ingest.events import MetricDirectory, ingest
from models.events import EventIn
from tests.conftest import free_port
from workflows.router import ROUTER_WORKFLOW_ID

EVENTS = 20_000
PROFILES = 2_000


def start_worker(db, temporal_server, task_queue: str, metrics_port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        **db.env(),
        "TEMPORAL_ADDRESS": temporal_server.client.service_client.config.target_host,
        "HERALD_TASK_QUEUE": task_queue,
        "HERALD_WORKER_METRICS_PORT": str(metrics_port),
        "HERALD_ROUTER_BATCH_SIZE": "100",
        "HERALD_ROUTER_POLL_SECONDS": "0.5",
        "HERALD_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([find_binary("herald"), "worker"], env=env)


def pending(db) -> int:
    return db.scalar("SELECT count(*) FROM routing_outbox WHERE routed_at IS NULL")


def wait_for(condition, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


async def test_killed_worker_loses_and_duplicates_nothing(temporal_server, db):
    metrics = MetricDirectory()
    for start in range(0, EVENTS, 1000):
        ingest(
            db.engine,
            metrics,
            [
                EventIn.model_validate(
                    {
                        "metric": "Placed Order",
                        "profile": {"external_id": f"c{i % PROFILES}"},
                        "unique_id": f"order-{i}",
                        "value": 1.0,
                    }
                )
                for i in range(start, start + 1000)
            ],
            "test",
        )
    task_queue = f"crash-{uuid.uuid4()}"
    metrics_port = free_port()
    worker = start_worker(db, temporal_server, task_queue, metrics_port)
    try:
        wait_for(lambda: pending(db) <= EVENTS - 2_000, 60, "routing to start")
        # The worker exports the Temporal SDK's metrics for Prometheus.
        async with httpx.AsyncClient() as client:
            sdk_metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert "temporal_activity_execution_latency" in sdk_metrics
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        left = pending(db)
        assert 0 < left < EVENTS, "the kill must land while routing is under way"

        worker = start_worker(db, temporal_server, task_queue, free_port())
        wait_for(lambda: pending(db) == 0, 90, "the restarted worker to drain the outbox")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        await temporal_server.client.get_workflow_handle(ROUTER_WORKFLOW_ID).terminate("test done")

    # Exactly once: the per-profile totals the router increments equal the stored events.
    assert db.scalar("SELECT sum(count) FROM profile_metric_stat") == EVENTS
    mismatched = db.scalar(
        "SELECT count(*) FROM profile_metric_stat s WHERE s.count <> "
        "(SELECT count(*) FROM event e WHERE e.profile_id = s.profile_id "
        " AND e.metric_id = s.metric_id)"
    )
    assert mismatched == 0
    routed = "SELECT count(*) FROM routing_outbox WHERE kind = 'event' AND routed_at IS NOT NULL"
    assert db.scalar(routed) == EVENTS
