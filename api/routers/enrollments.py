"""The operator API over flow enrollments: list, inspect, cancel; the review queue; step report.

Cancelling and review decisions live in herald/flows/enrollments.py (database first, Temporal
best effort); the `Herald-Temporal` response header says `cancel_requested` or
`pending_reconcile`.
"""

import asyncio
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, require_private_key
from api.errors import not_found
from api.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    decode_time_cursor,
    keyset_page,
)
from api.temporal_link import TEMPORAL_HEADER, TemporalLink
from herald.core.db import session_scope
from herald.core.temporal import OPERATOR_CALL_TIMEOUT_SECONDS
from herald.flows import enrollments, report
from herald.flows.contract import (
    QUERY_STATE,
    EnrollmentState,
)
from herald.flows.store import load_flow
from models.flow_dto import (
    EnrollmentDetail,
    EnrollmentPublic,
    EnrollmentStatus,
    FlowReport,
    ReviewItemPublic,
    ReviewStatus,
    TimelineEntry,
)
from models.flows import EnrollmentStep, FlowEnrollment, ReviewItem

router = APIRouter(tags=["enrollments"], dependencies=[Depends(require_private_key)])
log = structlog.get_logger("herald.api")


# ---- Temporal, best effort ----------------------------------------------------------------------


async def _live_state(link: TemporalLink, workflow_id: str) -> EnrollmentState | None:
    try:
        client = await asyncio.wait_for(link.client(), OPERATOR_CALL_TIMEOUT_SECONDS)
        handle = client.get_workflow_handle(workflow_id)
        return await asyncio.wait_for(
            handle.query(QUERY_STATE, result_type=EnrollmentState), OPERATOR_CALL_TIMEOUT_SECONDS
        )
    except Exception as exc:  # unreachable, not found, query failed: serve the DB view
        log.warning("enrollment state query failed", workflow_id=workflow_id, error=repr(exc))
        return None


def _public(row: FlowEnrollment) -> EnrollmentPublic:
    return EnrollmentPublic.model_validate(row.model_dump())


# ---- enrollments --------------------------------------------------------------------------------


@router.get(
    "/v1/flows/{flow_id}/enrollments", summary="Enrollments of a flow, oldest first (filterable)"
)
def list_enrollments(
    flow_id: str,
    engine: EngineDep,
    status: EnrollmentStatus | None = None,
    step: Annotated[str | None, Query(description="current step id")] = None,
    profile_id: str | None = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[EnrollmentPublic]:
    after = decode_time_cursor(cursor)
    c = FlowEnrollment.__table__.c
    stmt = select(FlowEnrollment).where(c.flow_id == flow_id)
    if status is not None:
        stmt = stmt.where(c.status == status)
    if step is not None:
        stmt = stmt.where(c.current_step == step)
    if profile_id is not None:
        stmt = stmt.where(c.profile_id == profile_id)
    with session_scope(engine) as session:
        load_flow(session, flow_id)
        page, next_cursor = keyset_page(session, stmt, (c.started_at, c.workflow_id), limit, after)
    return Page[EnrollmentPublic](data=[_public(r) for r in page], next_cursor=next_cursor)


def _enrollment_with_timeline(engine, workflow_id: str) -> EnrollmentDetail:
    with session_scope(engine) as session:
        row = session.get(FlowEnrollment, workflow_id)
        if row is None:
            raise not_found("enrollment", workflow_id)
        steps = session.scalars(
            select(EnrollmentStep)
            .where(EnrollmentStep.workflow_id == workflow_id)
            .order_by(EnrollmentStep.at, EnrollmentStep.id)
        )
        timeline = [TimelineEntry.model_validate(s.model_dump()) for s in steps]
        return EnrollmentDetail(**_public(row).model_dump(), timeline=timeline)


@router.get(
    "/v1/enrollments/{workflow_id:path}",
    summary="One enrollment: its row, timeline and (while running) the workflow's live state",
)
async def get_enrollment(workflow_id: str, request: Request, engine: EngineDep) -> EnrollmentDetail:
    detail = await run_in_threadpool(_enrollment_with_timeline, engine, workflow_id)
    if detail.status == EnrollmentStatus.running:
        detail.live = await _live_state(request.app.state.temporal, workflow_id)
    return detail


@router.post(
    "/v1/enrollments/{workflow_id:path}/cancel",
    summary="Cancel a running enrollment (no further step runs; exit reason `operator`)",
    description="The enrollment is cancelled in the database at once (nothing more is sent), "
    "then its workflow is asked to cancel. Header `Herald-Temporal`: `cancel_requested`, or "
    "`pending_reconcile` when Temporal could not be reached; the worker's periodic reconcile "
    "then cancels the workflow (terminating it if it does not stop within five minutes).",
)
async def cancel_enrollment(
    workflow_id: str, request: Request, response: Response, engine: EngineDep
) -> EnrollmentPublic:
    cancelled, told = await enrollments.cancel(engine, request.app.state.temporal, workflow_id)
    response.headers[TEMPORAL_HEADER] = told
    return cancelled


# ---- review queue -------------------------------------------------------------------------------


@router.get("/v1/flows/{flow_id}/review-queue", summary="Messages waiting for (or past) review")
def list_review_queue(
    flow_id: str,
    engine: EngineDep,
    status: ReviewStatus = ReviewStatus.pending,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[ReviewItemPublic]:
    after = decode_cursor(cursor)
    stmt = select(ReviewItem).where(ReviewItem.flow_id == flow_id, ReviewItem.status == status)
    with session_scope(engine) as session:
        load_flow(session, flow_id)
        page, next_cursor = keyset_page(session, stmt, ReviewItem.id, limit, after)
    return Page[ReviewItemPublic](
        data=[ReviewItemPublic.model_validate(r.model_dump()) for r in page],
        next_cursor=next_cursor,
    )


@router.post("/v1/review-queue/{item_id}/approve", summary="Approve a queued message: it sends")
async def approve_review_item(
    item_id: str, request: Request, engine: EngineDep
) -> ReviewItemPublic:
    return await enrollments.decide(
        engine, request.app.state.temporal, item_id, ReviewStatus.approved
    )


@router.post("/v1/review-queue/{item_id}/reject", summary="Reject a queued message: it is skipped")
async def reject_review_item(item_id: str, request: Request, engine: EngineDep) -> ReviewItemPublic:
    return await enrollments.decide(
        engine, request.app.state.temporal, item_id, ReviewStatus.rejected
    )


# ---- report -------------------------------------------------------------------------------------


@router.get("/v1/flows/{flow_id}/report", summary="Per-step counts over all versions")
def flow_report(flow_id: str, engine: EngineDep) -> FlowReport:
    with session_scope(engine) as session:
        return report.flow_report(session, flow_id)
