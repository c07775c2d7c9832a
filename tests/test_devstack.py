"""`herald dev --demo`: the quick start's run command, end to end, twice (data and keys persist)."""

import os
import re
import signal
import subprocess
import time

import httpx
import pytest
from typer.testing import CliRunner

from herald.cli.commands import app as cli
from herald.cli.devstack import find_binary
from tests.conftest import free_port


def run_until(proc: subprocess.Popen, marker: str, within: float) -> str:
    out = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        out.append(line)
        if marker in line:
            return "".join(out)
    proc.kill()
    pytest.fail(f"{marker!r} not seen; output:\n{''.join(out)[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    # Keep reading: the children share the pipe, and a full pipe would block their shutdown.
    proc.communicate(timeout=90)


def test_dev_stack_runs_the_demo_and_keeps_data_across_restarts(tmp_path):
    ports = {name: free_port() for name in ("api", "temporal", "ui", "metrics")}
    env = {
        **os.environ,
        "HERALD_DATA_DIR": str(tmp_path / "data"),
        "HERALD_API_PORT": str(ports["api"]),
        "HERALD_DEV_TEMPORAL_PORT": str(ports["temporal"]),
        "HERALD_TEMPORAL_UI_PORT": str(ports["ui"]),
        "HERALD_WORKER_METRICS_PORT": str(ports["metrics"]),
        "HERALD_LOG_LEVEL": "WARNING",
    }
    for name in ("TEMPORAL_ADDRESS", "HERALD_TEMPORAL_ADDRESS", "HERALD_DATABASE_URL"):
        env.pop(name, None)

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [find_binary("herald"), "dev", "--demo"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = start()
    try:
        output = run_until(first, "== demo done ==", 150)
        ready = httpx.get(f"http://127.0.0.1:{ports['api']}/readyz", timeout=5)
        ui = httpx.get(f"http://127.0.0.1:{ports['ui']}/", timeout=5)
    finally:
        stop(first)
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": True,
        "temporal": True,
    }
    assert ui.status_code == 200  # the Temporal Web UI
    assert "first: accepted, second: duplicate" in output
    assert "accepted 3, duplicates 0, rejected 1" in output
    assert re.search(r"routing: \d+ routed, 0 pending", output)
    assert "segment 'Big orders in 30 days (demo)': ['ada@example.com']" in output
    assert re.search(r"Running\s+herald/router\s+EventRouter", output)
    # The demo's thank-you flow: one enrollment per order, its first email in the outbox.
    assert "outbox -> ada@example.com: 'Thanks for your order, Ada'" in output
    assert re.search(r"Running\s+flow/fl_\w+/\w+/demo-order-1001\s+FlowEnrollment", output)
    private_key = re.search(r"Private key (\S+)", output).group(1)

    second = start()
    try:
        again = run_until(second, "== demo done ==", 150)
    finally:
        stop(second)
    assert f"Private key {private_key}" in again  # keys are reused, not recreated
    assert "first: duplicate, second: duplicate" in again  # the data survived the restart
    assert "accepted 0, duplicates 3, rejected 1" in again
    assert again.count("FlowEnrollment") == 1  # the re-sent order did not enrol again


def test_keys_create_prints_a_key_that_is_stored_only_as_a_digest(database, monkeypatch):
    monkeypatch.setenv("HERALD_DATABASE_URL", database.env()["HERALD_DATABASE_URL"])
    from herald.core.config import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["keys", "create", "--kind", "write", "--name", "shop"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    key = re.search(r'"key": "(hk_write_[^"]+)"', result.output).group(1)
    assert database.scalar("SELECT count(*) FROM api_key WHERE digest = :k", k=key) == 0
    assert database.scalar("SELECT name FROM api_key WHERE lookup = :l", l=key[:17]) == "shop"
