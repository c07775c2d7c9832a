"""Operator actions on enrollments: cancel one, decide a queued message (approve or reject).

The database is changed first and is what counts: the deliver activity checks an enrollment's
status and a review item's decision at send time, and the workflow re-reads both when it wakes.
The Temporal calls that follow are best effort (a short timeout, a warning when Temporal cannot
be reached). A decision's signal only wakes the workflow early: a lost one delays it until its
next wake-up, it never lets a message out. A cancellation asks the workflow to cancel; whatever
Temporal missed is caught up by the router's reconcile (cancellation.py).
"""

import asyncio
from typing import Literal

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Engine
from temporalio.service import RPCError, RPCStatusCode

from herald.core.db import session_scope
from herald.core.errors import Conflict, NotFound
from herald.core.temporal import OPERATOR_CALL_TIMEOUT_SECONDS, TemporalAccess
from herald.flows.cancellation import cancel_enrollments
from herald.flows.contract import SIGNAL_APPROVE, SIGNAL_REJECT
from models.enums import EnrollmentStatus, ReviewStatus
from models.flow_dto import EnrollmentPublic, ReviewItemPublic
from models.flows import FlowEnrollment, ReviewItem
from models.types import utcnow

log = structlog.get_logger("herald.flows")

_SIGNAL_CONCURRENCY = 32

Decision = Literal[ReviewStatus.approved, ReviewStatus.rejected]
_SIGNALS: dict[Decision, str] = {
    ReviewStatus.approved: SIGNAL_APPROVE,
    ReviewStatus.rejected: SIGNAL_REJECT,
}


# ---- cancel -------------------------------------------------------------------------------------


def _cancel(engine: Engine, workflow_id: str) -> EnrollmentPublic:
    with session_scope(engine) as session:
        changed = cancel_enrollments(
            session, "operator", FlowEnrollment.__table__.c.workflow_id == workflow_id
        )
        row = session.get(FlowEnrollment, workflow_id, populate_existing=True)
        if row is None:
            raise NotFound("enrollment", workflow_id)
        if not changed:
            raise Conflict(f"enrollment {workflow_id!r} has already ended ({row.status})")
        return EnrollmentPublic.model_validate(row.model_dump())


async def cancel(
    engine: Engine, temporal: TemporalAccess, workflow_id: str
) -> tuple[EnrollmentPublic, str]:
    """Cancels a running enrollment (exit reason `operator`); returns it and whether Temporal
    was told now (`cancel_requested`) or the reconcile will (`pending_reconcile`)."""
    cancelled = await asyncio.to_thread(_cancel, engine, workflow_id)
    told = await temporal.stop_workflows([(workflow_id, "operator")], OPERATOR_CALL_TIMEOUT_SECONDS)
    return cancelled, told


# ---- review decisions ---------------------------------------------------------------------------


def _decide(engine: Engine, item_id: str, decision: Decision) -> ReviewItemPublic:
    with session_scope(engine) as session:
        item = session.get(ReviewItem, item_id, with_for_update=True)
        if item is None:
            raise NotFound("review item", item_id)
        if item.status != ReviewStatus.pending:
            raise Conflict(f"review item {item_id!r} is already {item.status}")
        enrollment_status = session.scalar(
            select(FlowEnrollment.status).where(FlowEnrollment.workflow_id == item.workflow_id)
        )
        # An ended enrollment sends nothing more, so the item expires instead of being decided.
        item.status = (
            decision if enrollment_status == EnrollmentStatus.running else ReviewStatus.expired
        )
        item.decided_at = utcnow()
        session.add(item)
        public = ReviewItemPublic.model_validate(item.model_dump())
    if public.status == ReviewStatus.expired:  # committed: the item stays expired
        raise Conflict(
            f"the enrollment of review item {item_id!r} has ended ({enrollment_status}); "
            "the item is expired"
        )
    return public


async def decide(
    engine: Engine, temporal: TemporalAccess, item_id: str, decision: Decision
) -> ReviewItemPublic:
    """Records the decision, then wakes the enrollment's workflow (best effort)."""
    item = await asyncio.to_thread(_decide, engine, item_id, decision)
    await signal_enrollments(temporal, [item.workflow_id], _SIGNALS[decision], item.step_id)
    return item


async def signal_enrollments(
    temporal: TemporalAccess, workflow_ids: list[str], signal: str, arg: str
) -> int:
    """Signals each enrollment workflow; returns how many took it. Never raises.

    Workflows that have already closed are skipped silently; anything else is logged.
    """
    if not workflow_ids:
        return 0
    try:
        client = await asyncio.wait_for(temporal.client(), OPERATOR_CALL_TIMEOUT_SECONDS)
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
                await asyncio.wait_for(handle.signal(signal, arg), OPERATOR_CALL_TIMEOUT_SECONDS)
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
