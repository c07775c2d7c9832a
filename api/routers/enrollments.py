"""The operator API over flow enrollments: list, inspect, cancel; the review queue; step report.

The database is changed first and is what counts: the deliver activity checks an enrollment's
status and a review item's decision at send time, and the workflow re-reads both when it wakes.
The Temporal calls that follow are best effort (a short timeout, a warning when Temporal cannot
be reached). A review decision's signal only wakes the workflow early: a lost one delays it until
its next wake-up, it never lets a message out. A cancellation asks the workflow to cancel, and
whatever Temporal missed is caught up by the router's reconcile (herald/flows/cancellation.py): the
`Herald-Temporal` response header says `cancel_requested` or `pending_reconcile`.
"""

import asyncio
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import func, select
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError, RPCStatusCode

from api.deps import EngineDep, require_private_key
from api.errors import ApiError, not_found
from api.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    decode_time_cursor,
    keyset_page,
)
from api.temporal_link import TEMPORAL_HEADER, TemporalLink, stop_enrollments
from herald.core.db import session_scope
from herald.flows.cancellation import cancel_enrollments
from herald.flows.contract import (
    QUERY_STATE,
    SIGNAL_APPROVE,
    SIGNAL_REJECT,
    EnrollmentState,
)
from herald.flows.graph import FlowDefinition
from models.delivery import Delivery
from models.flow_dto import (
    EnrollmentDetail,
    EnrollmentPublic,
    EnrollmentStatus,
    FlowReport,
    ReviewItemPublic,
    ReviewStatus,
    StepReport,
    TimelineEntry,
)
from models.flows import EnrollmentStep, Flow, FlowEnrollment, FlowVersion, ReviewItem
from models.types import utcnow

router = APIRouter(tags=["enrollments"], dependencies=[Depends(require_private_key)])
log = structlog.get_logger("herald.api")

# How long the API waits for Temporal on behalf of an operator before falling back to the DB.
TEMPORAL_TIMEOUT_SECONDS = 2.0
_SIGNAL_CONCURRENCY = 32


# ---- Temporal, best effort ----------------------------------------------------------------------


async def signal_enrollments(
    link: TemporalLink, workflow_ids: list[str], signal: str, arg: str
) -> int:
    """Signals each enrollment workflow; returns how many took it. Never raises.

    Workflows that have already closed are skipped silently; anything else is logged.
    """
    if not workflow_ids:
        return 0
    try:
        client = await asyncio.wait_for(link.client(), TEMPORAL_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure to connect: the DB change already stands
        log.warning(
            "enrollment signal not sent: Temporal unreachable",
            signal=signal,
            workflows=len(workflow_ids),
            error=repr(exc),
        )
        return 0
    gate = asyncio.Semaphore(_SIGNAL_CONCURRENCY)

    async def one(workflow_id: str) -> bool:
        async with gate:
            try:
                handle = client.get_workflow_handle(workflow_id)
                await asyncio.wait_for(handle.signal(signal, arg), TEMPORAL_TIMEOUT_SECONDS)
                return True
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    log.warning(
                        "enrollment signal failed",
                        signal=signal,
                        workflow_id=workflow_id,
                        error=repr(exc),
                    )
            except TimeoutError:
                log.warning("enrollment signal timed out", signal=signal, workflow_id=workflow_id)
            return False

    return sum(await asyncio.gather(*(one(w) for w in workflow_ids)))


async def _live_state(link: TemporalLink, workflow_id: str) -> EnrollmentState | None:
    try:
        client = await asyncio.wait_for(link.client(), TEMPORAL_TIMEOUT_SECONDS)
        handle = client.get_workflow_handle(workflow_id)
        return await asyncio.wait_for(
            handle.query(QUERY_STATE, result_type=EnrollmentState), TEMPORAL_TIMEOUT_SECONDS
        )
    except Exception as exc:  # unreachable, not found, query failed: serve the DB view
        log.warning("enrollment state query failed", workflow_id=workflow_id, error=repr(exc))
        return None


def _flow(session: Session, flow_id: str) -> Flow:
    row = session.get(Flow, flow_id)
    if row is None or row.deleted_at is not None:
        raise not_found("flow", flow_id)
    return row


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
        _flow(session, flow_id)
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
    if detail.status == "running":
        detail.live = await _live_state(request.app.state.temporal, workflow_id)
    return detail


def _cancel(engine, workflow_id: str) -> EnrollmentPublic:
    with session_scope(engine) as session:
        changed = cancel_enrollments(
            session, "operator", FlowEnrollment.__table__.c.workflow_id == workflow_id
        )
        row = session.get(FlowEnrollment, workflow_id, populate_existing=True)
        if row is None:
            raise not_found("enrollment", workflow_id)
        if not changed:
            raise ApiError(
                409, "conflict", f"enrollment {workflow_id!r} has already ended ({row.status})"
            )
        return _public(row)


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
    cancelled = await run_in_threadpool(_cancel, engine, workflow_id)
    response.headers[TEMPORAL_HEADER] = await stop_enrollments(
        request.app.state.temporal, [workflow_id], "operator"
    )
    return cancelled


# ---- review queue -------------------------------------------------------------------------------


@router.get("/v1/flows/{flow_id}/review-queue", summary="Messages waiting for (or past) review")
def list_review_queue(
    flow_id: str,
    engine: EngineDep,
    status: ReviewStatus = "pending",
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[ReviewItemPublic]:
    after = decode_cursor(cursor)
    stmt = select(ReviewItem).where(ReviewItem.flow_id == flow_id, ReviewItem.status == status)
    with session_scope(engine) as session:
        _flow(session, flow_id)
        page, next_cursor = keyset_page(session, stmt, ReviewItem.id, limit, after)
    return Page[ReviewItemPublic](
        data=[ReviewItemPublic.model_validate(r.model_dump()) for r in page],
        next_cursor=next_cursor,
    )


def _decide(engine, item_id: str, decision: str) -> ReviewItemPublic:
    with session_scope(engine) as session:
        item = session.get(ReviewItem, item_id, with_for_update=True)
        if item is None:
            raise not_found("review item", item_id)
        if item.status != "pending":
            raise ApiError(409, "conflict", f"review item {item_id!r} is already {item.status}")
        enrollment_status = session.scalar(
            select(FlowEnrollment.status).where(FlowEnrollment.workflow_id == item.workflow_id)
        )
        # An ended enrollment sends nothing more, so the item expires instead of being decided.
        item.status = decision if enrollment_status == "running" else "expired"
        item.decided_at = utcnow()
        session.add(item)
        public = ReviewItemPublic.model_validate(item.model_dump())
    if public.status == "expired":
        raise ApiError(
            409,
            "conflict",
            f"the enrollment of review item {item_id!r} has ended ({enrollment_status}); "
            "the item is expired",
        )
    return public


async def _decide_and_signal(
    request: Request, engine, item_id: str, decision: str, signal: str
) -> ReviewItemPublic:
    item = await run_in_threadpool(_decide, engine, item_id, decision)
    await signal_enrollments(request.app.state.temporal, [item.workflow_id], signal, item.step_id)
    return item


@router.post("/v1/review-queue/{item_id}/approve", summary="Approve a queued message: it sends")
async def approve_review_item(
    item_id: str, request: Request, engine: EngineDep
) -> ReviewItemPublic:
    return await _decide_and_signal(request, engine, item_id, "approved", SIGNAL_APPROVE)


@router.post("/v1/review-queue/{item_id}/reject", summary="Reject a queued message: it is skipped")
async def reject_review_item(item_id: str, request: Request, engine: EngineDep) -> ReviewItemPublic:
    return await _decide_and_signal(request, engine, item_id, "rejected", SIGNAL_REJECT)


# ---- report -------------------------------------------------------------------------------------

_UNSPECIFIED = "unspecified"


@router.get("/v1/flows/{flow_id}/report", summary="Per-step counts over all versions")
def flow_report(flow_id: str, engine: EngineDep) -> FlowReport:
    s = EnrollmentStep.__table__.c
    d = Delivery.__table__.c
    with session_scope(engine) as session:
        flow = _flow(session, flow_id)
        latest = session.get(FlowVersion, (flow_id, flow.latest_version))
        outcomes = session.execute(
            select(s.step_id, s.step_type, s.outcome, s.reason, func.count())
            .where(s.flow_id == flow_id)
            .group_by(s.step_id, s.step_type, s.outcome, s.reason)
        ).all()
        deliveries = session.execute(
            select(d.step_id, d.status, func.count())
            .where(d.run_kind == "flow", d.run_id == flow_id)
            .group_by(d.step_id, d.status)
        ).all()

    steps: dict[str, StepReport] = {}
    if latest is not None:
        for step in FlowDefinition.model_validate(latest.definition).steps:
            steps.setdefault(step.id, StepReport(step_id=step.id, step_type=step.type))

    def report(step_id: str, step_type: str | None = None) -> StepReport:
        if step_id not in steps:
            steps[step_id] = StepReport(step_id=step_id, step_type=step_type)
        return steps[step_id]

    for step_id, step_type, outcome, reason, count in sorted(outcomes, key=_sort_key):
        line = report(step_id, step_type)
        if outcome in ("skipped", "exited"):
            by_reason = getattr(line, outcome)
            key = reason or _UNSPECIFIED
            by_reason[key] = by_reason.get(key, 0) + count
        elif outcome in ("entered", "processed", "queued", "held"):
            setattr(line, outcome, getattr(line, outcome) + count)
    for step_id, status, count in sorted(deliveries, key=_sort_key):
        line = report(step_id)
        line.deliveries[status] = line.deliveries.get(status, 0) + count
    return FlowReport(flow_id=flow_id, steps=list(steps.values()))


def _sort_key(row) -> tuple:
    # Steps only older versions had are listed in a stable order, whatever the backend returns.
    return tuple("" if v is None else str(v) for v in row)
