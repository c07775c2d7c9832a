"""Events: single and batch ingest (202: stored durably, routing follows), reads, metrics."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.deps import EngineDep, require_ingest_key, require_private_key
from api.errors import ApiError, invalid
from api.event_batches import batch_response, validate_items
from api.pagination import CursorQuery, LimitQuery, Page, decode_int_cursor, keyset_page
from herald.core.db import session_scope
from models.events import (
    MAX_BATCH_EVENTS,
    BatchResult,
    Event,
    EventAccepted,
    EventIn,
    EventPublic,
    Metric,
    MetricPublic,
)

router = APIRouter(tags=["events"])


@router.post(
    "/v1/events",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Record one event (idempotent on profile + metric + unique_id)",
    dependencies=[Depends(require_ingest_key)],
)
async def create_event(body: EventIn, request: Request) -> EventAccepted:
    [result] = await request.app.state.ingest.submit([body], "api")
    return EventAccepted(
        status="duplicate" if result.duplicate else "accepted",
        event_id=result.event_id,
        profile_id=result.profile_id,
    )


@router.post(
    "/v1/events/batch",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Record up to 1,000 events; valid ones are stored, invalid ones reported per item",
    response_model=BatchResult,
    dependencies=[Depends(require_ingest_key)],
)
async def create_events_batch(
    request: Request,
    events: Annotated[list[Any], Body(embed=True, description="up to 1,000 events")],
):
    if not events:
        raise invalid("events", "must hold at least one event")
    if len(events) > MAX_BATCH_EVENTS:
        raise invalid("events", f"at most {MAX_BATCH_EVENTS} events per batch (got {len(events)})")
    valid, rejected = validate_items(events, "events", EventIn.model_validate)
    result = await batch_response(request, valid, rejected, "api")
    if not valid:
        # Nothing stored: the whole request failed, so it is a 422, with the same report.
        raise ApiError(
            422,
            "validation_error",
            "no event in the batch is valid",
            [e.model_dump() for r in rejected for e in r.errors or []],
        )
    return JSONResponse(result.model_dump(mode="json"), status_code=202)


@router.get(
    "/v1/events",
    summary="Stored events, newest first",
    dependencies=[Depends(require_private_key)],
)
def list_events(
    engine: EngineDep,
    profile_id: Annotated[str | None, Query()] = None,
    metric: Annotated[str | None, Query(description="metric name")] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[EventPublic]:
    before = decode_int_cursor(cursor)
    stmt = select(Event, Metric.name).join(Metric, Metric.id == Event.metric_id)
    if profile_id is not None:
        stmt = stmt.where(Event.profile_id == profile_id)
    if metric is not None:
        stmt = stmt.where(Metric.name == metric)
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(
            session,
            stmt,
            Event.id,
            limit,
            before,
            descending=True,
            scalars=False,
            last_key=lambda row: row[0].id,
        )
    return Page[EventPublic](
        data=[EventPublic.model_validate({**e.model_dump(), "metric": name}) for e, name in page],
        next_cursor=next_cursor,
    )


@router.get(
    "/v1/metrics",
    summary="Known metrics: the built-in catalogue and custom ones",
    dependencies=[Depends(require_private_key)],
)
def list_metrics(engine: EngineDep) -> list[MetricPublic]:
    with session_scope(engine) as session:
        rows = session.scalars(select(Metric).order_by(Metric.builtin.desc(), Metric.name))
        return [MetricPublic.model_validate(m.model_dump()) for m in rows]
