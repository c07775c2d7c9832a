"""Routing handler for flows: triggers start enrollments, conversions exit them.

Runs inside the router's transaction (see herald/routing/contract.py). For each routed item, in
order:
1. conversions: running enrollments of the profile whose flow exits on this metric get
   exit_reason `converted` in the database (what the deliver activity checks at send time) and
   an `exit` signal (what wakes them now);
2. wait-for-event: running enrollments of the profile get an `event` signal for the metric;
3. triggers: every live or manual flow whose trigger matches (metric + trigger filters, the list,
   or the segment the profile organically entered) enrols the profile if re-entry and flow
   filters allow it.
Exits come before triggers, so the event that starts an enrollment never ends it.

Workflow starts and signals happen after the transaction commits (`after_commit`), so the
router never holds the database (SQLite's single write lock) while it waits on Temporal. The
enrollment row is written with `workflow_started = false` and flipped once Temporal accepted the
start; rows a crash left unstarted are started again by a later batch. Starting is idempotent:
the workflow ID embeds the trigger's unique id, starting it again finds the same run (or, once it
has closed, is refused). A lost exit signal only delays the wake-up: the deliver activity reads
the exit from the database before every send. Every 30 s the same pass also reconciles cancelled
rows with their workflows (activities/workflow_reconcile.py).
"""

import asyncio
import concurrent.futures
import contextlib
import hashlib
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy import select, update
from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.workflow_reconcile import WorkflowReconciler
from herald.core.clock import activity_now
from herald.core.db import session_scope
from herald.core.search_attributes import attributes
from herald.core.sql import insert_ignoring_conflicts
from herald.flows.conditions import profile_matches
from herald.flows.contract import (
    SIGNAL_EVENT,
    SIGNAL_EXIT,
    WORKFLOW_TYPE,
    EnrollmentInput,
    TriggerContext,
    enrollment_workflow_id,
)
from herald.flows.graph import FlowDefinition, MetricTrigger, WaitForEvent
from herald.flows.property_filters import event_matches
from herald.routing.contract import RoutedItem
from models.account import Account
from models.enums import EnrollmentStatus, FlowStatus, OutboxKind
from models.flows import Flow, FlowEnrollment, FlowVersion
from models.profile import Profile

# Profile ids per IN list: far below every backend's limit on bound parameters.
_IN_CHUNK = 500

log = structlog.get_logger("herald.flows")

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.:@-]{1,100}$")


def entry_key(raw: str) -> str:
    """The trigger's unique id if it is short and plain, else a digest of it."""
    if _SAFE_KEY.match(raw):
        return raw
    return "h-" + hashlib.sha256(raw.encode()).hexdigest()[:32]


# Concurrent Temporal calls per batch: enough to hide latency, few enough not to swamp a server.
_CONCURRENT_CALLS = 32
# An unstarted enrollment older than this was left by a crash between commit and start.
_RECOVER_AFTER = timedelta(seconds=30)
_RECOVERY_INTERVAL_SECONDS = 10.0
# Cancelled rows against running workflows (activities/workflow_reconcile.py): a cheap, batched
# pass; a missed cancellation is caught up within RETRY_AFTER plus this.
_RECONCILE_INTERVAL_SECONDS = 30.0


@dataclass
class Effects:
    starts: list[tuple[str, EnrollmentInput]] = field(default_factory=list)
    signals: list[tuple[str, str, str]] = field(default_factory=list)  # (workflow id, name, arg)


class TemporalBridge:
    """Runs Temporal client calls from the router's activity thread on the worker's loop."""

    def __init__(
        self,
        client: Client,
        loop: asyncio.AbstractEventLoop,
        task_queue: str,
        search_attributes: bool = True,
    ):
        self.client = client
        self.loop = loop
        self.task_queue = task_queue
        self.search_attributes = search_attributes

    def apply(self, effects: Effects) -> None:
        if not (effects.starts or effects.signals):
            return
        future = asyncio.run_coroutine_threadsafe(self._apply(effects), self.loop)
        while True:
            try:
                future.result(timeout=2)
                return
            except concurrent.futures.TimeoutError:
                # Thousands of starts can take a while: keep the calling activity alive.
                if activity.in_activity():
                    activity.heartbeat()

    async def _apply(self, effects: Effects) -> None:
        gate = asyncio.Semaphore(_CONCURRENT_CALLS)

        async def bounded(call):
            async with gate:
                await call

        await asyncio.gather(
            *(bounded(self._start(wid, params)) for wid, params in effects.starts),
            *(bounded(self._signal(*s)) for s in effects.signals),
        )

    async def _start(self, workflow_id: str, params: EnrollmentInput) -> None:
        params = params.model_copy(update={"search_attributes": self.search_attributes})
        tags = attributes(
            kind="flow",
            flow_id=params.flow_id,
            profile_id=params.profile_id,
            step=params.definition.entry_step,
        )
        # WorkflowAlreadyStartedError: a retried batch, and this enrollment already ran.
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await self.client.start_workflow(
                WORKFLOW_TYPE,
                params,
                id=workflow_id,
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=tags if self.search_attributes else None,
            )

    async def _signal(self, workflow_id: str, name: str, arg: str) -> None:
        try:
            await self.client.get_workflow_handle(workflow_id).signal(name, arg)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # Closed meanwhile: nothing left to tell it.


class FlowRoutingHandler:
    name = "flows"

    def __init__(
        self,
        bridge: TemporalBridge,
        clock=activity_now,
        reconciler: WorkflowReconciler | None = None,
    ) -> None:
        self.bridge = bridge
        self.clock = clock
        self._definitions: dict[tuple[str, int], FlowDefinition] = {}
        self._pending = Effects()
        self._last_recovery = 0.0
        self._last_reconcile = 0.0
        if reconciler is None and isinstance(bridge, TemporalBridge):
            reconciler = WorkflowReconciler(bridge.client, bridge.loop)
        self.reconciler = reconciler  # None: a bridge without Temporal (tests that record starts)

    def handle(self, session: Session, items: list[RoutedItem]) -> None:
        effects = self._pending = Effects()
        live = [i for i in items if not i.backfill]
        if not live:
            return
        flows = self._candidate_flows(session, live)
        events = [i for i in live if i.kind is OutboxKind.event]
        running = _Running.load(session, {i.profile_id for i in events}) if events else None
        for item in live:
            if running is not None and item.kind is OutboxKind.event:
                running.exit_on(item)
                self._wake_waiters(session, running, item, effects)
            started = len(effects.starts)
            self._triggers(session, item, flows, effects)
            if running is not None:  # later items of the batch see the new enrollments
                for workflow_id, params in effects.starts[started:]:
                    running.add(session, workflow_id, params)
        if running is not None:
            self._exits(session, running, effects)

    def after_commit(self, engine) -> None:
        effects, self._pending = self._pending, Effects()
        self.start(engine, effects)
        if time.monotonic() - self._last_recovery >= _RECOVERY_INTERVAL_SECONDS:
            self._last_recovery = time.monotonic()
            effects = Effects()
            with session_scope(engine) as session:
                self._recover(session, effects)
            self.start(engine, effects)
        if (
            self.reconciler is not None
            and time.monotonic() - self._last_reconcile >= _RECONCILE_INTERVAL_SECONDS
        ):
            self._last_reconcile = time.monotonic()
            self.reconciler.run(engine, self.clock())

    def start(self, engine, effects: Effects) -> None:
        """Starts (and signals) what a committed transaction decided; marks the starts done."""
        self.bridge.apply(effects)
        if effects.starts:
            started = [wid for wid, _ in effects.starts]
            with session_scope(engine) as session:
                session.execute(
                    update(FlowEnrollment)
                    .where(FlowEnrollment.workflow_id.in_(started))
                    .values(workflow_started=True)
                )

    def _recover(self, session: Session, effects: Effects) -> None:
        rows = session.execute(
            select(FlowEnrollment)
            .where(
                FlowEnrollment.workflow_started.is_(False),
                FlowEnrollment.status == EnrollmentStatus.running,
                FlowEnrollment.started_at < self.clock() - _RECOVER_AFTER,
            )
            .order_by(FlowEnrollment.started_at)
            .limit(200)
        ).scalars()
        for row in rows:
            flow = session.get(Flow, row.flow_id)
            effects.starts.append(
                (
                    row.workflow_id,
                    EnrollmentInput(
                        flow_id=row.flow_id,
                        flow_name=flow.name if flow else row.flow_id,
                        version=row.version,
                        profile_id=row.profile_id,
                        entry_key=row.entry_key,
                        timezone=self._timezone(session, row.profile_id),
                        definition=self.definition(session, row.flow_id, row.version),
                        trigger=TriggerContext.model_validate(row.trigger),
                    ),
                )
            )

    # ---- lookups -------------------------------------------------------------------------------

    def definition(self, session: Session, flow_id: str, version: int) -> FlowDefinition:
        key = (flow_id, version)
        if key not in self._definitions:
            row = session.get(FlowVersion, key)
            self._definitions[key] = FlowDefinition.model_validate(row.definition)
        return self._definitions[key]

    def _candidate_flows(self, session: Session, items: list[RoutedItem]) -> list[Flow]:
        keys = {i.metric for i in items if i.metric} | {i.list_id for i in items if i.list_id}
        keys |= {i.segment_id for i in items if i.kind is OutboxKind.segment_added}
        if not keys:
            return []
        return list(
            session.execute(
                select(Flow).where(
                    Flow.trigger_key.in_(keys),
                    Flow.trigger_type.in_(("metric", "list", "segment")),
                    Flow.status.in_((FlowStatus.live, FlowStatus.manual)),
                    Flow.deleted_at.is_(None),
                )
            ).scalars()
        )

    # ---- conversions and waits -----------------------------------------------------------------

    def _exits(self, session: Session, running: "_Running", effects: Effects) -> None:
        """One UPDATE for the batch's conversions; the guard skips an enrollment that ended
        meanwhile (PostgreSQL: its own activity may finish it while this batch routes)."""
        if not running.exited:
            return
        enrollments = FlowEnrollment.__table__
        for start in range(0, len(running.exited), _IN_CHUNK):
            exiting = session.execute(
                update(enrollments)
                .where(
                    enrollments.c.workflow_id.in_(running.exited[start : start + _IN_CHUNK]),
                    enrollments.c.status == EnrollmentStatus.running,
                    enrollments.c.exit_reason.is_(None),
                )
                .values(exit_reason="converted")
                .returning(enrollments.c.workflow_id)
            ).scalars()
            for workflow_id in exiting:
                effects.signals.append((workflow_id, SIGNAL_EXIT, "converted"))

    def _wake_waiters(
        self, session: Session, running: "_Running", item: RoutedItem, effects: Effects
    ) -> None:
        for workflow_id, flow_id in running.of(item.profile_id):
            version = running.versions[workflow_id]
            steps = self.definition(session, flow_id, version).steps
            if any(isinstance(s, WaitForEvent) and s.metric == item.metric for s in steps):
                effects.signals.append((workflow_id, SIGNAL_EVENT, item.metric))

    # ---- triggers ------------------------------------------------------------------------------

    def _triggers(
        self, session: Session, item: RoutedItem, flows: list[Flow], effects: Effects
    ) -> None:
        for flow in flows:
            if item.kind is OutboxKind.event:
                if flow.trigger_type != "metric" or flow.trigger_key != item.metric:
                    continue
                trigger = TriggerContext(
                    type="metric",
                    metric=item.metric,
                    event_id=item.event_id,
                    unique_id=item.unique_id,
                    value=item.value,
                    properties=item.properties or {},
                    time=item.time,
                )
                key = entry_key(item.unique_id or str(item.event_id))
            elif item.kind is OutboxKind.list_added:
                if flow.trigger_type != "list" or flow.trigger_key != item.list_id:
                    continue
                trigger = TriggerContext(type="list", list_id=item.list_id)
                key = f"list-{item.outbox_id}"
            elif item.kind is OutboxKind.segment_added:
                if flow.trigger_type != "segment" or flow.trigger_key != item.segment_id:
                    continue
                trigger = TriggerContext(type="segment", segment_id=item.segment_id)
                key = f"segment-{item.outbox_id}"
            else:
                continue
            self._enrol(session, flow, item.profile_id, key, trigger, effects)

    def _enrol(
        self,
        session: Session,
        flow: Flow,
        profile_id: str,
        key: str,
        trigger: TriggerContext,
        effects: Effects,
    ) -> None:
        definition = self.definition(session, flow.id, flow.latest_version)
        if isinstance(definition.trigger, MetricTrigger) and not event_matches(
            trigger.properties, trigger.value, definition.trigger.filters
        ):
            return
        now = self.clock()
        if not self._reentry_allows(session, flow.id, profile_id, definition, now):
            return
        if not profile_matches(session, profile_id, definition.filters, now):
            return
        workflow_id = enrollment_workflow_id(flow.id, profile_id, key)
        inserted = session.execute(
            insert_ignoring_conflicts(session, FlowEnrollment.__table__).returning(
                FlowEnrollment.__table__.c.workflow_id
            ),
            [
                {
                    "workflow_id": workflow_id,
                    "flow_id": flow.id,
                    "version": flow.latest_version,
                    "profile_id": profile_id,
                    "entry_key": key,
                    "status": EnrollmentStatus.running,
                    "current_step": definition.entry_step,
                    "trigger": trigger.model_dump(mode="json"),
                    "started_at": now,
                    "workflow_started": False,
                }
            ],
        ).first()
        if inserted is None:
            return  # the same trigger (same unique id) never enrols twice
        effects.starts.append(
            (
                workflow_id,
                EnrollmentInput(
                    flow_id=flow.id,
                    flow_name=flow.name,
                    version=flow.latest_version,
                    profile_id=profile_id,
                    entry_key=key,
                    timezone=self._timezone(session, profile_id),
                    definition=definition,
                    trigger=trigger,
                ),
            )
        )

    def _reentry_allows(
        self, session: Session, flow_id: str, profile_id: str, definition, now
    ) -> bool:
        last = session.execute(
            select(FlowEnrollment.started_at)
            .where(FlowEnrollment.flow_id == flow_id, FlowEnrollment.profile_id == profile_id)
            .order_by(FlowEnrollment.started_at.desc())
            .limit(1)
        ).scalar()
        if last is None:
            return True
        mode = definition.reentry.mode
        if mode == "every_time":
            return True
        if mode == "once":
            return False
        return now - last >= timedelta(days=definition.reentry.cooldown_days or 0)

    def _timezone(self, session: Session, profile_id: str) -> str:
        tz = session.execute(select(Profile.timezone).where(Profile.id == profile_id)).scalar()
        if tz:
            return tz
        return session.execute(select(Account.timezone).where(Account.id == 1)).scalar() or "UTC"


class _Running:
    """The batch's profiles' running enrollments, read once and kept up to date as the batch is
    routed in order: an event exits those of its profile whose flow converts on its metric,
    then wakes those still running that wait for it, then may enrol the profile. Two queries
    per batch instead of two per event, which were most of routing's time (and SQLite's write
    lock) with no flow in sight."""

    def __init__(self) -> None:
        self.by_profile: dict[str, dict[str, str]] = {}  # profile -> {workflow id: flow id}
        self.versions: dict[str, int] = {}
        self.exit_metric: dict[str, str | None] = {}  # flow id -> its exit metric
        self.exited: list[str] = []

    @classmethod
    def load(cls, session: Session, profile_ids: set[str]) -> "_Running":
        running = cls()
        ids = sorted(profile_ids)
        for start in range(0, len(ids), _IN_CHUNK):
            rows = session.execute(
                select(
                    FlowEnrollment.workflow_id,
                    FlowEnrollment.profile_id,
                    FlowEnrollment.flow_id,
                    FlowEnrollment.version,
                ).where(
                    FlowEnrollment.profile_id.in_(ids[start : start + _IN_CHUNK]),
                    FlowEnrollment.status == EnrollmentStatus.running,
                    FlowEnrollment.exit_reason.is_(None),
                )
            ).all()
            for workflow_id, profile_id, flow_id, version in rows:
                running.by_profile.setdefault(profile_id, {})[workflow_id] = flow_id
                running.versions[workflow_id] = version
        running._learn_flows(session, {f for e in running.by_profile.values() for f in e.values()})
        return running

    def _learn_flows(self, session: Session, flow_ids: set[str]) -> None:
        unknown = sorted(flow_ids - self.exit_metric.keys())
        if unknown:
            rows = session.execute(select(Flow.id, Flow.exit_metric).where(Flow.id.in_(unknown)))
            self.exit_metric.update({flow_id: metric for flow_id, metric in rows})

    def add(self, session: Session, workflow_id: str, started: EnrollmentInput) -> None:
        self.by_profile.setdefault(started.profile_id, {})[workflow_id] = started.flow_id
        self.versions[workflow_id] = started.version
        self._learn_flows(session, {started.flow_id})

    def of(self, profile_id: str) -> list[tuple[str, str]]:
        return list(self.by_profile.get(profile_id, {}).items())

    def exit_on(self, item: RoutedItem) -> None:
        enrollments = self.by_profile.get(item.profile_id)
        if not enrollments or item.metric is None:
            return
        for workflow_id, flow_id in list(enrollments.items()):
            if self.exit_metric.get(flow_id) == item.metric:
                self.exited.append(workflow_id)
                del enrollments[workflow_id]
