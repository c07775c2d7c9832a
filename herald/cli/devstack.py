"""`herald dev`: the whole stack on one machine, in the foreground.

Temporal dev server (SQLite file under the data dir, WAL, Web UI, Herald's search attributes),
then migrations, local keys, the worker and the API as child processes. Ctrl-C stops everything;
the next start reuses the data and the keys.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import structlog

from herald.cli.migrate import upgrade
from herald.core.config import SEARCH_ATTRIBUTES, Settings
from herald.core.db import make_engine, session_scope
from herald.core.keys import KeyVerifier, create_key
from models.enums import ApiKeyKind

log = structlog.get_logger("herald.dev")

# How long a child gets after SIGTERM before it is killed: past the worker's own bound
# (worker_shutdown_grace_seconds 15 + 5 s for cancelled activities to return), with a margin.
_STOP_WAIT_SECONDS = 25


def find_binary(name: str) -> str:
    """Prefer the binary installed next to this interpreter (the venv), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name!r} not found: install the project (make run does this)")
    return found


def temporal_command(settings: Settings, port: int) -> list[str]:
    cmd = [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--db-filename",
        str((settings.data_dir / "temporal.db").resolve()),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(settings.temporal_ui_port),
        "--namespace",
        settings.temporal_namespace,
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--log-level",
        "warn",
    ]
    for name in SEARCH_ATTRIBUTES:
        cmd += ["--search-attribute", f"{name}=Keyword"]
    return cmd


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}; see the log above")
        if check():
            return
        time.sleep(0.25)
    raise SystemExit(f"{what} did not become ready within {timeout:.0f}s")


def ensure_dev_keys(settings: Settings, engine) -> dict[str, str]:
    """The local admin and write keys: created on first start, read back on later starts."""
    path = settings.data_dir / "dev-keys.json"
    verifier = KeyVerifier(engine, cache_seconds=0)
    if path.exists():
        keys = json.loads(path.read_text())
        if all(verifier.verify(keys.get(k, "")) for k in ("private_key", "write_key")):
            return keys
    with session_scope(engine) as session:
        _, private = create_key(session, ApiKeyKind.private, "local admin (herald dev)")
        _, write = create_key(session, ApiKeyKind.write, "local write key (herald dev)")
    keys = {"private_key": private, "write_key": write}
    path.write_text(json.dumps(keys, indent=2))
    path.chmod(0o600)
    return keys


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Own session: Ctrl-C reaches only `herald dev`, which then stops the children in order.
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def run_dev(settings: Settings, demo: bool) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    children: list[tuple[str, subprocess.Popen]] = []
    env = dict(os.environ)
    env["HERALD_DATABASE_URL"] = settings.resolved_database_url
    env["HERALD_DATA_DIR"] = str(settings.data_dir.resolve())

    def stop_all() -> None:
        # Herald's processes first, while Temporal is still up for their graceful shutdown.
        for group in (
            [c for c in children if c[0] != "temporal"],
            [c for c in children if c[0] == "temporal"],
        ):
            for name, proc in group:
                if proc.poll() is None:
                    log.info("stopping", process=name)
                    proc.send_signal(signal.SIGTERM)
            for name, proc in group:
                try:
                    proc.wait(timeout=_STOP_WAIT_SECONDS)
                except subprocess.TimeoutExpired:
                    log.warning("killing", process=name)
                    proc.kill()

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        embedded_temporal = not (
            os.environ.get("TEMPORAL_ADDRESS") or os.environ.get("HERALD_TEMPORAL_ADDRESS")
        )
        if embedded_temporal:
            port = settings.dev_temporal_port
            if _port_open("127.0.0.1", port):
                raise SystemExit(f"port {port} is taken: is another Temporal server running?")
            log.info("starting Temporal dev server", port=port, ui=settings.temporal_ui_port)
            temporal = _spawn(temporal_command(settings, port), env)
            children.append(("temporal", temporal))
            _wait_for("Temporal", lambda: _port_open("127.0.0.1", port), 60, temporal)
            settings = settings.model_copy(update={"temporal_address": f"127.0.0.1:{port}"})
        env["TEMPORAL_ADDRESS"] = settings.temporal_address

        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        keys = ensure_dev_keys(settings, engine)
        engine.dispose()

        herald = find_binary("herald")
        children.append(("worker", _spawn([herald, "worker"], env)))
        children.append(("api", _spawn([herald, "api"], env)))
        base = f"http://{settings.api_host}:{settings.api_port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for("the API", ready, 90, children[-1][1])
        ui = f"http://127.0.0.1:{settings.temporal_ui_port}" if embedded_temporal else "(external)"
        print(
            "\n"
            f"  Herald is running.\n"
            f"  API         {base}   (docs: {base}/docs)\n"
            f"  Temporal UI {ui}\n"
            f"  Private key {keys['private_key']}\n"
            f"  Write key   {keys['write_key']}\n"
            f"  Data        {settings.data_dir.resolve()}\n"
            f"  Ctrl-C stops everything.\n",
            flush=True,
        )
        if demo:
            from herald.cli.demo import run_demo

            run_demo(base, keys["private_key"], keys["write_key"], settings.temporal_address)
        while True:
            for name, proc in children:
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with code {proc.returncode}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all()
