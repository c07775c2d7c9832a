"""Routing status: how far the router is behind ingest (the outbox backlog)."""

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import func, select

from api.deps import EngineDep, PrivateKey
from herald.db import session_scope
from models.routing import RoutingOutbox
from models.types import utcnow

router = APIRouter(prefix="/v1/routing", tags=["operations"])


class RoutingStatus(BaseModel):
    pending: int
    oldest_pending_at: datetime | None
    lag_seconds: float
    routed: int
    last_routed_at: datetime | None


@router.get("/status", summary="Outbox backlog and routing progress")
def routing_status(engine: EngineDep, _key: PrivateKey) -> RoutingStatus:
    outbox = RoutingOutbox.__table__
    with session_scope(engine) as session:
        pending, oldest = session.execute(
            select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.routed_at.is_(None))
        ).one()
        routed, last = session.execute(
            select(func.count(), func.max(outbox.c.routed_at)).where(
                outbox.c.routed_at.is_not(None)
            )
        ).one()
    return RoutingStatus(
        pending=pending,
        oldest_pending_at=oldest,
        lag_seconds=(utcnow() - oldest).total_seconds() if oldest else 0.0,
        routed=routed,
        last_routed_at=last,
    )
