"""Cancelling enrollments and campaigns: the database first, then Temporal, reconciled later.

The row is what counts: the deliver activity and the campaign page sender check it before every
send, so a cancelled row sends nothing more even while its workflow still runs. Temporal follows,
best effort: an enrollment gets the `exit` signal (it carries the reason) and then a cancellation
request, which FlowEnrollmentWorkflow handles by closing its row and writing the exit line of its
timeline; a campaign workflow is cancelled, and cancels its path children. Neither call may fail
an API request whose transaction committed. What they miss (Temporal unreachable, a crash
between the commit and the call, a worker that never handles the request) is caught up by the
router's periodic reconcile (activities/workflow_reconcile.py): it repeats the request for rows
cancelled more than RETRY_AFTER ago whose workflow still runs, and terminates the workflow once
CANCEL_GRACE has passed.

An enrollment counts as stopped in Temporal once its timeline has its exit line (outcome
`exited`): the workflow writes it as it closes, and the reconcile writes it for a workflow it
terminated or found closed. So "cancelled, without an exit line" is the reconcile's work list,
with no extra column.
"""

import asyncio
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import exists, select, update
from sqlmodel import Session
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from herald.flows.contract import SIGNAL_EXIT
from herald.flows.steps import StepOutcome
from models.enums import EnrollmentStatus, ReviewStatus
from models.flows import EnrollmentStep, FlowEnrollment, ReviewItem
from models.types import utcnow

# How long a workflow gets to handle a cancellation request before it is terminated. Handling
# it is one workflow task and one local activity (seconds); the margin covers a worker restart
# or the backlog after deleting a flow with thousands of enrollments (~40 closes/s per worker).
CANCEL_GRACE = timedelta(minutes=5)
# The API's own request gets this long before the reconcile repeats it.
RETRY_AFTER = timedelta(minutes=1)
# Exit reasons that close an enrollment as `cancelled` (not `exited`).
CANCEL_REASONS = frozenset({"operator", "flow_deleted", "profile_deleted", "cancelled"})


class StopRequest(StrEnum):
    requested = "requested"  # Temporal took the request
    closed = "closed"  # the workflow had already closed (or never started)
    failed = "failed"  # Temporal did not answer: the reconcile will catch up


# ---- the database -------------------------------------------------------------------------------


def cancel_enrollments(session: Session, reason: str, *conditions) -> list[str]:
    """Marks the running enrollments matching `conditions` cancelled; returns their workflow ids.

    Their pending review items expire with them (they will never be sent).
    """
    table = FlowEnrollment.__table__
    ids = list(
        session.scalars(
            update(table)
            .where(table.c.status == EnrollmentStatus.running, *conditions)
            .values(status=EnrollmentStatus.cancelled, exit_reason=reason, ended_at=utcnow())
            .returning(table.c.workflow_id)
        )
    )
    expire_reviews(session, ids)
    return ids


def expire_reviews(session: Session, workflow_ids: list[str], at: datetime | None = None) -> None:
    """Pending review items of ended enrollments will never be sent: mark them expired."""
    if workflow_ids:
        table = ReviewItem.__table__
        session.execute(
            update(table)
            .where(table.c.workflow_id.in_(workflow_ids), table.c.status == ReviewStatus.pending)
            .values(status=ReviewStatus.expired, decided_at=at or utcnow())
        )


def has_exit_line():
    """SQL: the enrollment's timeline has its exit line (its workflow is known to be stopped)."""
    steps = EnrollmentStep.__table__.c
    return exists(
        select(steps.id).where(
            steps.workflow_id == FlowEnrollment.__table__.c.workflow_id,
            steps.outcome == StepOutcome.exited,
        )
    )


# ---- Temporal -----------------------------------------------------------------------------------


def _gone(exc: RPCError) -> bool:
    # NOT_FOUND: never started, closed ("workflow execution already completed") or past retention.
    return exc.status == RPCStatusCode.NOT_FOUND


async def request_stop(
    handle: WorkflowHandle, exit_reason: str | None, rpc_seconds: float
) -> StopRequest:
    """Signals `exit(exit_reason)` (when given) and requests cancellation. Never raises.

    The signal goes first so that the workflow, which cannot read a cancellation's reason,
    writes the right one to its timeline.
    """
    try:
        if exit_reason is not None:
            await asyncio.wait_for(handle.signal(SIGNAL_EXIT, exit_reason), rpc_seconds)
        await asyncio.wait_for(handle.cancel(reason=exit_reason or ""), rpc_seconds)
        return StopRequest.requested
    except RPCError as exc:
        return StopRequest.closed if _gone(exc) else StopRequest.failed
    except Exception:  # timeouts, a connection lost midway
        return StopRequest.failed


async def request_stops(
    client: Client, stops: list[tuple[str, str | None]], rpc_seconds: float, concurrency: int = 32
) -> list[StopRequest]:
    """request_stop for each (workflow id, exit reason), a bounded number at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(workflow_id: str, reason: str | None) -> StopRequest:
        async with gate:
            return await request_stop(client.get_workflow_handle(workflow_id), reason, rpc_seconds)

    return list(await asyncio.gather(*(one(w, r) for w, r in stops)))
