"""The worker process: it stops on SIGTERM within a bounded time, even while an activity is
stuck, and its unauthenticated metrics endpoint listens on loopback only.

A real `herald worker` process and a real Temporal dev server. Two long activities: a flow's
webhook step calling a local server that accepts the request and never answers (async: it can
be cancelled), and the router's sync activity waiting in SQLite's C code for a write lock the
test holds (it cannot see a cancellation until the wait ends, 30 s later). The bounds below are
deadlines on a hang, not timings; the measured times are printed.
"""

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from temporalio.service import RPCError

from herald.cli.devstack import find_binary
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.core.observability import metrics_bind_address
from herald.flows.graph import FlowDefinition
from herald.ingest.events import MetricDirectory, ingest
from models.events import EventIn
from models.flows import Flow, FlowVersion
from tests.conftest import free_port
from worker import CANCELLED_ACTIVITY_WAIT_SECONDS
from workflows.router import ROUTER_WORKFLOW_ID

GRACE_SECONDS = 2  # HERALD_WORKER_SHUTDOWN_GRACE_SECONDS in these tests
# A hang, not slowness, would pass these: the SQLite wait alone lasts 30 s.
EXIT_DEADLINE = GRACE_SECONDS + CANCELLED_ACTIVITY_WAIT_SECONDS + 10


EVENT = {"metric": "Asked For Callback", "profile": {"email": "slow@example.com"}}


class SilentServer:
    """Accepts connections and reads requests, and never answers one."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requested = threading.Event()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.connections.append(conn)
            if conn.recv(65536):
                self.requested.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def webhook_flow_event(db, url: str) -> None:
    definition = FlowDefinition.model_validate(
        {
            "trigger": {"type": "metric", "metric": "Asked For Callback"},
            "steps": [{"id": "crm", "type": "webhook", "url": url, "next": None}],
        }
    )
    with session_scope(db.engine) as session:
        flow_id = new_id("fl")
        session.add(
            Flow(
                id=flow_id,
                name="callback",
                status="live",
                trigger_type="metric",
                trigger_key="Asked For Callback",
            )
        )
        session.flush()
        session.add(
            FlowVersion(flow_id=flow_id, version=1, definition=definition.model_dump(mode="json"))
        )
    ingest(db.engine, MetricDirectory(), [EventIn.model_validate(EVENT)], "test")


def start_worker(db, temporal_server, log: Path, **settings: str) -> subprocess.Popen:
    env = {
        **os.environ,
        **db.env(),
        "TEMPORAL_ADDRESS": temporal_server.client.service_client.config.target_host,
        "HERALD_TASK_QUEUE": f"shutdown-{uuid.uuid4()}",
        "HERALD_WORKER_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        "HERALD_WORKER_METRICS_PORT": str(free_port()),
        "HERALD_ROUTER_POLL_SECONDS": "0.5",
        "HERALD_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
        # The attempt would otherwise end by itself after 10 s: keep it running until stopped.
        "HERALD_WEBHOOK_TIMEOUT_SECONDS": "600",
        "HERALD_LOG_LEVEL": "INFO",
        "HERALD_LOG_FORMAT": "json",
        **{f"HERALD_{name.upper()}": value for name, value in settings.items()},
    }
    with log.open("w") as out:
        return subprocess.Popen(
            [find_binary("herald"), "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def terminate_router(temporal_server) -> None:
    # The router's ID is fixed and the dev server is shared: one left by another test would
    # route on its own task queue, and this test's worker would reuse it (USE_EXISTING).
    with contextlib.suppress(RPCError):  # none running
        await temporal_server.client.get_workflow_handle(ROUTER_WORKFLOW_ID).terminate("test")


def wait_for(condition, within: float, what: str, worker: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if worker.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} not seen; worker output:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def exit_time(worker: subprocess.Popen, log: Path) -> float:
    started = time.monotonic()
    try:
        worker.wait(EXIT_DEADLINE)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        pytest.fail(f"worker still running {EXIT_DEADLINE} s after SIGTERM:\n{log.read_text()}")
    return time.monotonic() - started


def logged(log: Path, marker: str):
    return lambda: marker in log.read_text()


@pytest.fixture
async def workers(temporal_server, db, tmp_path):
    """Starts `herald worker` processes; each is waited for until it logs "worker started"."""
    await terminate_router(temporal_server)
    started: list[subprocess.Popen] = []

    def start(**settings: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = start_worker(db, temporal_server, log, **settings)
        started.append(worker)
        wait_for(logged(log, "worker started"), 60, "the worker starting", worker, log)
        return worker, log

    yield start
    for worker in started:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    await terminate_router(temporal_server)


@pytest.fixture
def stuck_webhook(workers, db, silent_server):
    """A worker whose webhook activity is waiting on a server that never answers."""

    def start(**settings: str) -> tuple[subprocess.Popen, Path]:
        worker, log = workers(**settings)
        webhook_flow_event(db, f"http://127.0.0.1:{silent_server.port}/hook")
        wait_for(silent_server.requested.is_set, 60, "the webhook request", worker, log)
        return worker, log

    return start


@pytest.fixture
def sqlite_write_lock(db):
    """Holds SQLite's write lock: every transaction of the worker (BEGIN IMMEDIATE) waits."""
    if db.backend != "sqlite":
        pytest.skip("the lock wait in C that this needs is SQLite's busy handler")
    lock = sqlite3.connect(db.url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)

    def take() -> None:
        lock.execute("BEGIN IMMEDIATE")

    yield take
    if lock.in_transaction:
        lock.execute("ROLLBACK")
    lock.close()


async def test_sigterm_stops_the_worker_within_its_grace_period_while_an_activity_hangs(
    stuck_webhook,
):
    worker, log = stuck_webhook()
    worker.send_signal(signal.SIGTERM)
    took = exit_time(worker, log)
    print(f"worker exited {took:.1f} s after SIGTERM (grace {GRACE_SECONDS} s)")
    assert worker.returncode == 0, log.read_text()
    assert "worker stopped" in log.read_text()


async def test_sigterm_stops_the_worker_while_a_sync_activity_is_stuck_in_c_code(
    workers, db, sqlite_write_lock
):
    worker, log = workers()
    # The router routes this event: its sync activity is running and polling.
    ingest(db.engine, MetricDirectory(), [EventIn.model_validate(EVENT)], "test")
    routed = "SELECT count(*) FROM routing_outbox WHERE routed_at IS NULL"
    wait_for(lambda: db.scalar(routed) == 0, 60, "routing", worker, log)
    sqlite_write_lock()
    # The router polls every 50 ms; a second later it is waiting on the lock, in C.
    await asyncio.sleep(1)
    worker.send_signal(signal.SIGTERM)
    took = exit_time(worker, log)
    print(f"worker exited {took:.1f} s after SIGTERM with an activity stuck in C")
    assert worker.returncode == 0, log.read_text()
    assert "ignored cancellation" in log.read_text()


async def test_a_second_signal_exits_at_once(stuck_webhook):
    # A grace far past the deadline: only the second signal can make the worker exit in time.
    worker, log = stuck_webhook(worker_shutdown_grace_seconds="300")
    worker.send_signal(signal.SIGTERM)
    wait_for(logged(log, "worker stopping"), 10, "shutdown starting", worker, log)
    worker.send_signal(signal.SIGINT)
    took = exit_time(worker, log)
    print(f"worker exited {took:.1f} s after the second signal")
    assert took < 10, log.read_text()
    assert worker.returncode == 128 + signal.SIGINT


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) of TCP sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


async def test_the_worker_metrics_endpoint_listens_on_loopback_only(workers):
    port = free_port()
    worker, _ = workers(worker_metrics_port=str(port))
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    worker.send_signal(signal.SIGTERM)
    worker.wait(EXIT_DEADLINE)


def test_the_metrics_address_defaults_to_loopback_and_brackets_an_ipv6_host():
    assert metrics_bind_address(Settings()) == "127.0.0.1:9464"
    assert metrics_bind_address(Settings(worker_metrics_host="::1")) == "[::1]:9464"


def test_the_shutdown_grace_defaults_to_a_bounded_few_seconds():
    assert 10 <= Settings().worker_shutdown_grace_seconds <= 20
