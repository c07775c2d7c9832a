"""Routing operations: the outbox backlog, failing segments, and parked (dead-letter) items."""

from datetime import datetime

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel
from sqlalchemy import func, select

from api.deps import EngineDep, require_private_key
from api.errors import not_found
from api.pagination import CursorQuery, LimitQuery, Page, decode_int_cursor, keyset_page
from herald.core.db import session_scope
from herald.routing.contract import dead_letter_count, requeue
from models.routing import RoutingDeadLetter, RoutingOutbox, SegmentRecheck, SegmentRoutingHealth
from models.types import utcnow

router = APIRouter(
    prefix="/v1/routing", tags=["operations"], dependencies=[Depends(require_private_key)]
)


class FailingSegment(BaseModel):
    segment_id: str
    failures: int  # in a row
    total_failures: int
    last_error: str
    last_failed_at: datetime | None
    retry_after: datetime | None
    deferred_profiles: int


class RoutingStatus(BaseModel):
    pending: int
    oldest_pending_at: datetime | None
    lag_seconds: float
    routed: int
    last_routed_at: datetime | None
    dead_letters: int  # parked rows awaiting an operator (GET /v1/routing/dead-letters)
    segment_errors: int  # failed incremental segment re-checks, all time
    failing_segments: list[FailingSegment]  # failing now, or with re-checks still deferred


class DeadLetter(BaseModel):
    id: int
    outbox_id: int
    kind: str
    profile_id: str
    event_id: int | None
    segment_id: str | None
    handler: str
    error: str
    created_at: datetime  # when the outbox row was written
    parked_at: datetime


class Requeued(BaseModel):
    outbox_id: int


@router.get("/status", summary="Outbox backlog, routing progress and routing errors")
def routing_status(engine: EngineDep) -> RoutingStatus:
    outbox = RoutingOutbox.__table__
    health, rechecks = SegmentRoutingHealth.__table__, SegmentRecheck.__table__
    with session_scope(engine) as session:
        pending, oldest = session.execute(
            select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.routed_at.is_(None))
        ).one()
        routed, last = session.execute(
            select(func.count(), func.max(outbox.c.routed_at)).where(
                outbox.c.routed_at.is_not(None)
            )
        ).one()
        errors = session.execute(select(func.coalesce(func.sum(health.c.total_failures), 0)))
        deferred = (
            select(rechecks.c.segment_id, func.count().label("n"))
            .group_by(rechecks.c.segment_id)
            .subquery()
        )
        failing = session.execute(
            select(health, func.coalesce(deferred.c.n, 0).label("deferred"))
            .outerjoin(deferred, deferred.c.segment_id == health.c.segment_id)
            .where((health.c.failures > 0) | (deferred.c.n > 0))
            .order_by(health.c.segment_id)
        ).all()
        dead = dead_letter_count(session)
        segment_errors = errors.scalar_one()
    return RoutingStatus(
        pending=pending,
        oldest_pending_at=oldest,
        lag_seconds=(utcnow() - oldest).total_seconds() if oldest else 0.0,
        routed=routed,
        last_routed_at=last,
        dead_letters=dead,
        segment_errors=segment_errors,
        failing_segments=[
            FailingSegment(
                segment_id=row.segment_id,
                failures=row.failures,
                total_failures=row.total_failures,
                last_error=row.last_error,
                last_failed_at=row.last_failed_at,
                retry_after=row.retry_after,
                deferred_profiles=row.deferred,
            )
            for row in failing
        ],
    )


@router.get("/dead-letters", summary="Parked outbox rows, oldest first")
def list_dead_letters(
    engine: EngineDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[DeadLetter]:
    after = decode_int_cursor(cursor)
    letters, outbox = RoutingDeadLetter.__table__, RoutingOutbox.__table__
    stmt = (
        select(letters, outbox.c.kind, outbox.c.profile_id, outbox.c.event_id)
        .add_columns(outbox.c.segment_id, outbox.c.created_at)
        .join(outbox, outbox.c.id == letters.c.outbox_id)
    )
    with session_scope(engine) as session:
        rows, next_cursor = keyset_page(session, stmt, letters.c.id, limit, after, scalars=False)
    page = [DeadLetter.model_validate(row._mapping) for row in rows]
    return Page[DeadLetter](data=page, next_cursor=next_cursor)


@router.post(
    "/dead-letters/{dead_letter_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Put a parked row back in the outbox; the router routes it next",
)
def retry_dead_letter(dead_letter_id: int, engine: EngineDep) -> Requeued:
    with session_scope(engine) as session:
        outbox_id = requeue(session, dead_letter_id)
    if outbox_id is None:
        raise not_found("dead letter", str(dead_letter_id))
    return Requeued(outbox_id=outbox_id)
