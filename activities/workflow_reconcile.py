"""The periodic reconcile between cancelled rows and the workflows that run them.

The API cancels in the database first and then asks Temporal (herald/flows/cancellation.py); this
catches up whatever that missed, on both sides, a bounded batch per pass:

1. enrollments cancelled in the database whose workflow has not confirmed it stopped (no exit
   line in the timeline): a workflow still running is asked again (signal `exit` + cancel) once
   RETRY_AFTER has passed, and terminated once CANCEL_GRACE has; one that is closed (terminated,
   never started, gone) gets its exit line written here;
2. running enrollments whose workflow has closed or is gone (terminated by hand, failed, lost
   with a server): the row is closed (`failed`, reason `workflow_terminated`, ...). Running rows
   are swept a batch per pass in workflow-id order, so every row is checked in turn without
   asking Temporal about all of them at once; a running row whose profile was deleted meanwhile
   is cancelled (`profile_deleted`) the same way;
3. campaigns: a cancelled campaign whose workflow still runs is cancelled (terminated after the
   grace period); a scheduled or sending campaign whose workflow closed without finishing it, or
   is gone, is cancelled with reason `workflow_<status>`.

It runs in the router's activity thread (after a batch commits, see activities/flow_routing.py);
database work happens there, Temporal calls on the worker's event loop. It never raises: a
problem is logged and the next pass tries again.
"""

import asyncio
import concurrent.futures
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.flows import write_records
from herald.campaigns import store as campaign_store
from herald.campaigns import transitions
from herald.campaigns.contract import campaign_workflow_id
from herald.core.db import session_scope
from herald.flows.cancellation import (
    CANCEL_GRACE,
    RETRY_AFTER,
    cancel_enrollments,
    expire_reviews,
    has_exit_line,
    request_stops,
)
from herald.flows.steps import StepOutcome, StepRecord
from models.campaigns import Campaign
from models.enums import CampaignStatus, EnrollmentStatus
from models.flows import FlowEnrollment
from models.profile import Profile

log = structlog.get_logger("herald.reconcile")

_RPC_SECONDS = 5.0
# Cancelled campaigns are looked at for this long after their cancellation.
_CAMPAIGN_LOOKBACK = timedelta(days=7)
# A closed workflow whose running row is closed here, by how it closed.
_CLOSED_AS = {
    WorkflowExecutionStatus.COMPLETED: (EnrollmentStatus.completed, None),
    WorkflowExecutionStatus.CANCELED: (EnrollmentStatus.cancelled, "cancelled"),
    WorkflowExecutionStatus.TERMINATED: (EnrollmentStatus.failed, "workflow_terminated"),
    WorkflowExecutionStatus.FAILED: (EnrollmentStatus.failed, "workflow_failed"),
    WorkflowExecutionStatus.TIMED_OUT: (EnrollmentStatus.failed, "workflow_timed_out"),
}
_MISSING = (EnrollmentStatus.failed, "workflow_missing")


@dataclass(frozen=True)
class Seen:
    """What Temporal says about one workflow id (the latest run)."""

    found: bool
    status: WorkflowExecutionStatus | None = None
    close_time: datetime | None = None

    @property
    def running(self) -> bool:
        return self.found and self.status in (
            WorkflowExecutionStatus.RUNNING,
            WorkflowExecutionStatus.CONTINUED_AS_NEW,
        )


class WorkflowReconciler:
    def __init__(
        self,
        client: Client,
        loop: asyncio.AbstractEventLoop,
        grace: timedelta = CANCEL_GRACE,
        retry_after: timedelta = RETRY_AFTER,
        batch_size: int = 200,
    ) -> None:
        self.client = client
        self.loop = loop
        self.grace = grace
        self.retry_after = retry_after
        self.batch_size = batch_size
        self._sweep_after: str | None = None  # where the sweep of running rows goes on

    def run(self, engine: Engine, now: datetime) -> None:
        for part in (self._cancelled_enrollments, self._running_enrollments, self._campaigns):
            try:
                part(engine, now)
            except Exception as exc:  # the next pass tries again
                log.warning("reconcile failed", part=part.__name__, error=repr(exc))

    # ---- 1. cancelled enrollments -------------------------------------------------------------

    def _cancelled_enrollments(self, engine: Engine, now: datetime) -> None:
        e = FlowEnrollment.__table__.c
        with session_scope(engine) as session:
            rows = session.execute(
                select(e.workflow_id, e.current_step, e.exit_reason, e.ended_at)
                .where(
                    e.status == EnrollmentStatus.cancelled,
                    e.ended_at < now - self.retry_after,
                    ~has_exit_line(),
                )
                .order_by(e.ended_at)
                .limit(self.batch_size)
            ).all()
        if not rows:
            return
        seen = self._describe([r.workflow_id for r in rows])
        ask = [r for r in rows if _running(seen, r) and r.ended_at >= now - self.grace]
        overdue = [r for r in rows if _running(seen, r) and r.ended_at < now - self.grace]
        stopped = [r for r in rows if r.workflow_id in seen and not seen[r.workflow_id].running]
        if ask:
            self._call(
                request_stops(
                    self.client, [(r.workflow_id, r.exit_reason) for r in ask], _RPC_SECONDS
                )
            )
        terminated = self._terminate(
            [r.workflow_id for r in overdue], "cancelled: grace period over"
        )
        stopped += [r for r in overdue if r.workflow_id in terminated]
        if ask or terminated:
            log.info("reconcile: cancelled enrollments", asked=len(ask), terminated=len(terminated))
        if stopped:
            with session_scope(engine) as session:
                for r in stopped:
                    _write_exit_line(session, r.workflow_id, r.current_step, r.exit_reason, now)

    # ---- 2. running enrollments ---------------------------------------------------------------

    def _running_enrollments(self, engine: Engine, now: datetime) -> None:
        e = FlowEnrollment.__table__.c
        profile_exists = (
            select(Profile.id).where(Profile.id == e.profile_id).exists().label("profile_exists")
        )
        stmt = (
            select(e.workflow_id, e.current_step, profile_exists)
            .where(
                e.status == EnrollmentStatus.running,
                e.workflow_started.is_(True),
                e.started_at < now - self.retry_after,
            )
            .order_by(e.workflow_id)
            .limit(self.batch_size)
        )
        if self._sweep_after is not None:
            stmt = stmt.where(e.workflow_id > self._sweep_after)
        with session_scope(engine) as session:
            rows = session.execute(stmt).all()
        self._sweep_after = rows[-1].workflow_id if len(rows) == self.batch_size else None
        if not rows:
            return
        seen = self._describe([r.workflow_id for r in rows])
        orphans = [r.workflow_id for r in rows if not r.profile_exists and _running(seen, r)]
        closed = [r for r in rows if r.workflow_id in seen and not seen[r.workflow_id].running]
        if orphans:  # the profile was deleted while this enrollment was being started
            with session_scope(engine) as session:
                orphans = cancel_enrollments(session, "profile_deleted", e.workflow_id.in_(orphans))
            self._call(
                request_stops(self.client, [(w, "profile_deleted") for w in orphans], _RPC_SECONDS)
            )
        if not closed:
            return
        with session_scope(engine) as session:
            for r in closed:
                found = seen[r.workflow_id]
                status, reason = _CLOSED_AS.get(found.status, _MISSING) if found.found else _MISSING
                changed = session.execute(
                    update(FlowEnrollment.__table__)
                    .where(e.workflow_id == r.workflow_id, e.status == EnrollmentStatus.running)
                    .values(
                        status=status,
                        exit_reason=func.coalesce(e.exit_reason, reason),
                        ended_at=now,
                    )
                ).rowcount
                if not changed:
                    continue  # it closed normally between the two reads
                expire_reviews(session, [r.workflow_id], now)
                if reason is not None:
                    _write_exit_line(session, r.workflow_id, r.current_step, reason, now)
        log.info("reconcile: closed enrollments whose workflow had ended", rows=len(closed))

    # ---- 3. campaigns -------------------------------------------------------------------------

    def _campaigns(self, engine: Engine, now: datetime) -> None:
        c = Campaign.__table__.c
        settled = now - self.retry_after
        with session_scope(engine) as session:
            cancelled = session.execute(
                select(c.id, c.finished_at).where(
                    c.status == CampaignStatus.cancelled,
                    c.finished_at < settled,
                    c.finished_at >= now - _CAMPAIGN_LOOKBACK,
                )
            ).all()
            active = session.execute(
                select(c.id).where(
                    c.status.in_(campaign_store.ACTIVE_STATUSES), c.updated_at < settled
                )
            ).all()
        if not (cancelled or active):
            return
        ids = {r.id: campaign_workflow_id(r.id) for r in (*cancelled, *active)}
        seen = self._describe(list(ids.values()))

        def running(campaign_id: str) -> bool:
            found = seen.get(ids[campaign_id])
            return found is not None and found.running

        ask = [r.id for r in cancelled if running(r.id) and r.finished_at >= now - self.grace]
        overdue = [r.id for r in cancelled if running(r.id) and r.finished_at < now - self.grace]
        if ask:
            self._call(request_stops(self.client, [(ids[i], None) for i in ask], _RPC_SECONDS))
        self._terminate([ids[i] for i in overdue], "campaign cancelled: grace period over")

        lost: dict[str, str] = {}
        for r in active:
            found = seen.get(ids[r.id])
            if found is None or found.running:
                continue  # unknown (Temporal did not answer), or still working
            if not found.found:
                lost[r.id] = "workflow_missing"
            elif found.status != WorkflowExecutionStatus.COMPLETED and (
                found.close_time is None or found.close_time < settled
            ):
                # Closed a while ago (an unschedule reverts to draft right after its cancel).
                lost[r.id] = f"workflow_{found.status.name.lower()}"
        if lost:
            with session_scope(engine) as session:
                for campaign_id, reason in lost.items():
                    campaign = session.get(Campaign, campaign_id, with_for_update=True)
                    if campaign is not None and campaign.status in campaign_store.ACTIVE_STATUSES:
                        transitions.cancel(session, campaign, reason, now)
            log.warning("reconcile: cancelled campaigns whose workflow had ended", campaigns=lost)

    # ---- Temporal, on the worker's loop -------------------------------------------------------

    def _call(self, coro):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        while True:
            try:
                return future.result(timeout=2)
            except concurrent.futures.TimeoutError:
                if activity.in_activity():
                    activity.heartbeat()

    def _describe(self, workflow_ids: list[str]) -> dict[str, Seen]:
        """What Temporal says about each id; ids it did not answer for are left out."""

        async def all_of() -> dict[str, Seen]:
            gate = asyncio.Semaphore(32)

            async def one(workflow_id: str) -> tuple[str, Seen | None]:
                async with gate:
                    handle = self.client.get_workflow_handle(workflow_id)
                    try:
                        d = await handle.describe(rpc_timeout=timedelta(seconds=_RPC_SECONDS))
                    except RPCError as exc:
                        if exc.status == RPCStatusCode.NOT_FOUND:
                            return workflow_id, Seen(found=False)
                        return workflow_id, None
                    except Exception:
                        return workflow_id, None
                    return workflow_id, Seen(True, d.status, d.close_time)

            answers = await asyncio.gather(*(one(w) for w in workflow_ids))
            return {w: s for w, s in answers if s is not None}

        return self._call(all_of())

    def _terminate(self, workflow_ids: list[str], reason: str) -> set[str]:
        """Terminates each; returns the ids that are stopped now (terminated or already closed)."""
        if not workflow_ids:
            return set()

        async def all_of() -> set[str]:
            async def one(workflow_id: str) -> str | None:
                handle = self.client.get_workflow_handle(workflow_id)
                try:
                    await handle.terminate(
                        reason=reason, rpc_timeout=timedelta(seconds=_RPC_SECONDS)
                    )
                except RPCError as exc:
                    return workflow_id if exc.status == RPCStatusCode.NOT_FOUND else None
                except Exception:
                    return None
                return workflow_id

            return {w for w in await asyncio.gather(*(one(w) for w in workflow_ids)) if w}

        stopped = self._call(all_of())
        if stopped:
            log.warning("reconcile: terminated workflows", reason=reason, workflows=len(stopped))
        return stopped


def _running(seen: dict[str, Seen], row) -> bool:
    found = seen.get(row.workflow_id)
    return found is not None and found.running


def _write_exit_line(
    session, workflow_id: str, step_id: str | None, reason: str | None, at: datetime
) -> None:
    write_records(
        session,
        workflow_id,
        [
            StepRecord(
                step_id=step_id or "",
                step_type="exit",
                outcome=StepOutcome.exited,
                reason=reason or "cancelled",
                at=at,
            )
        ],
    )
