"""Liveness, readiness and Prometheus metrics."""

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select, text

from api.deps import require_private_key
from models.providers import ChannelProviderSetting

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="The database and Temporal are reachable")
async def readyz(request: Request) -> JSONResponse:
    checks = {
        "database": await asyncio.to_thread(_database_ok, request.app.state.engine),
        "temporal": await request.app.state.temporal.healthy(),
    }
    ready = all(checks.values())
    body: dict = {"status": "ready" if ready else "not_ready", "checks": checks}
    if checks["database"]:
        # Shown, not counted against readiness: restarting the API cannot fix credentials.
        # The reason is in GET /v1/providers (keyed); this page is public.
        body["providers"] = await asyncio.to_thread(_provider_states, request.app.state.engine)
    return JSONResponse(body, status_code=200 if ready else 503)


def _provider_states(engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ChannelProviderSetting.channel, ChannelProviderSetting.state).where(
                ChannelProviderSetting.state != "ok"
            )
        ).all()
    return {channel: state for channel, state in rows}


def _database_ok(engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get(
    "/metrics",
    summary="Prometheus metrics (needs a private key)",
    dependencies=[Depends(require_private_key)],
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
