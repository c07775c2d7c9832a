"""The FastAPI application factory."""

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.engine import Engine

from api.deps import refuse_unstorable_input
from api.errors import install_error_handlers
from api.middleware import GzipRequestMiddleware, RequestContextMiddleware
from api.routers import (
    account,
    campaigns,
    enrollments,
    events,
    flows,
    health,
    journey_results,
    lists,
    outbox,
    profiles,
    providers,
    rfm,
    routing,
    segments,
    tracking,
    webhooks,
)
from api.temporal_link import TemporalLink
from herald.core.config import Settings, get_settings
from herald.core.db import make_engine
from herald.core.keys import KeyVerifier
from herald.ingest.events import MetricDirectory
from herald.ingest.group_commit import IngestQueue

DESCRIPTION = """
Herald's HTTP API. Management endpoints take a **private key** (`Authorization: Bearer hk_priv_…`);
ingest endpoints (`/v1/events*`, `/v1/identify`, `/v1/track`, `/v1/batch`) also take a
**write key** (`hk_write_…`), as a bearer token or as the HTTP basic-auth username (Segment SDKs).
Errors are `{"code", "message", "errors": [{"field", "reason"}]}`.
"""


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or get_settings()
    owns_engine = engine is None
    engine = engine or make_engine(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if owns_engine:
            engine.dispose()

    app = FastAPI(
        title="Herald",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(refuse_unstorable_input)],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.keys = KeyVerifier(engine, settings.api_key_cache_seconds)
    app.state.metrics = MetricDirectory()
    app.state.ingest = IngestQueue(engine, app.state.metrics)
    app.state.temporal = TemporalLink(settings)
    app.add_middleware(GzipRequestMiddleware)
    app.add_middleware(RequestContextMiddleware)  # added last: runs first
    install_error_handlers(app)
    for module in (
        health,
        profiles,
        lists,
        segments,
        rfm,
        events,
        tracking,
        webhooks,
        account,
        routing,
        outbox,
        providers,
        flows,
        enrollments,
        campaigns,
        journey_results,
    ):
        app.include_router(module.router)
    return app
