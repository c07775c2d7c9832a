"""Routing handler: keeps materialized segment membership current as events and changes arrive.

For each batch it re-checks, for the batch's profiles only, the live segments that what happened
can affect: events re-check segments on their metrics (and journey segments, for engagement
events), list additions segments on those lists, profile changes segments on profile data. Drafts
are not re-checked (going live recomputes them in full). It runs after the engagement handler
(journey results must see this batch's opens and clicks) and before flow routing, so the
segment_added rows it writes reach flows in the next batch.

One segment never fails the batch: each re-check runs in a savepoint under the router's statement
budget. A segment whose re-check fails (too slow, or a definition that no longer parses) has the
profiles deferred to `segment_recheck` and its failure counted in `segment_routing_health`
(GET /v1/routing/status, `herald_routing_segment_failures_total`); it rests for a back-off that
doubles per failure, then a batch retries what was deferred.
"""

from datetime import datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from herald.analytics.engagement import engagement_kind
from herald.core.clock import activity_now
from herald.core.config import get_settings
from herald.core.db import is_transient
from herald.routing.contract import RoutedItem, count_segment_failure, describe
from herald.segments.membership import (
    affected,
    defer_rechecks,
    deferred_rechecks,
    parsed,
    refresh,
    settle_rechecks,
)
from models.enums import OutboxKind, SegmentStatus
from models.routing import SegmentRecheck, SegmentRoutingHealth
from models.segments import Segment

log = structlog.get_logger("herald.segments")

_health = SegmentRoutingHealth.__table__
# Deferred profiles one batch retries per segment: a long outage drains over several batches.
_RETRY_CHUNK = 2000
_MAX_BACKOFF_DOUBLINGS = 6  # 64x the base: an hour for the default minute


class SegmentRoutingHandler:
    name = "segments"

    def __init__(self, clock=activity_now, retry_seconds: float | None = None) -> None:
        self.clock = clock
        if retry_seconds is None:
            retry_seconds = get_settings().router_segment_retry_seconds
        self.retry_seconds = retry_seconds
        # Failures as last written, kept outside the transaction: when a batch rolls back for
        # another reason (a poison row), its halves must not pay for the same slow segment again.
        self._failures: dict[str, dict] = {}

    def handle(self, session: Session, items: list[RoutedItem]) -> None:
        checks = _Rechecks(session, self.clock(), self.retry_seconds, self._failures)
        checks.retry_deferred()
        for organic in (True, False):  # backfilled history moves members silently
            events = [i for i in items if i.kind is OutboxKind.event and i.backfill is not organic]
            if events:
                metrics = {i.metric for i in events if i.metric}
                checks.run([i.profile_id for i in events], organic, metrics=metrics)
                engaged = [i.profile_id for i in events if i.metric and engagement_kind(i.metric)]
                checks.run(engaged, organic, journey=True)
        added = [i for i in items if i.kind is OutboxKind.list_added]
        if added:
            lists = {i.list_id for i in added if i.list_id}
            checks.run([i.profile_id for i in added], True, lists=lists)
        changed = [i.profile_id for i in items if i.kind is OutboxKind.profile_changed]
        checks.run(changed, True, profile_changed=True)


class _Rechecks:
    """One batch's re-checks of the live segments, each isolated from the others."""

    def __init__(
        self, session: Session, now: datetime, retry_seconds: float, failures: dict[str, dict]
    ) -> None:
        self.session, self.now, self.retry_seconds = session, now, retry_seconds
        self.failures = failures
        self.segments = list(
            session.exec(
                select(Segment).where(Segment.status == SegmentStatus.live).order_by(Segment.id)
            )
            .scalars()
            .all()
        )
        self.health = {
            row.segment_id: row
            for row in session.execute(
                select(_health).where(_health.c.segment_id.in_([s.id for s in self.segments]))
            )
        }
        self.resting: set[str] = {
            sid
            for sid, row in self.health.items()
            if row.failures > 0 and row.retry_after is not None and row.retry_after > now
        }
        self._restore_rolled_back_failures()

    def _restore_rolled_back_failures(self) -> None:
        """Writes again a failure whose batch rolled back, so the segment rests as it should."""
        live = {s.id for s in self.segments}
        for segment_id, values in list(self.failures.items()):
            if segment_id not in live or values["retry_after"] <= self.now:
                del self.failures[segment_id]
                continue
            row = self.health.get(segment_id)
            if (
                row is None
                or row.last_failed_at is None
                or row.last_failed_at < values["last_failed_at"]
            ):
                self._upsert(values)
            self.resting.add(segment_id)

    def run(self, profile_ids: list[str], organic: bool, **changes) -> None:
        if not profile_ids:
            return
        for segment in self.segments:
            try:
                deps = parsed(segment)[1]
            except Exception as exc:
                # Unreadable: it may depend on anything, so every profile waits for it.
                if segment.id not in self.resting:
                    self._failed(segment.id, exc)
                defer_rechecks(self.session, segment.id, profile_ids, organic, self.now)
                continue
            if not affected(deps, **changes):
                continue
            if segment.id in self.resting:
                defer_rechecks(self.session, segment.id, profile_ids, organic, self.now)
                continue
            try:
                with self.session.begin_nested():
                    refresh(self.session, segment, self.now, profile_ids, organic=organic)
            except Exception as exc:
                if is_transient(exc):
                    raise
                self._failed(segment.id, exc)
                defer_rechecks(self.session, segment.id, profile_ids, organic, self.now)

    def retry_deferred(self) -> None:
        """Retries, once their back-off is over, the segments that have something deferred."""
        waiting = set(self.session.scalars(select(SegmentRecheck.segment_id).distinct())) | {
            sid for sid, row in self.health.items() if row.failures > 0
        }
        for segment in self.segments:
            if segment.id not in waiting or segment.id in self.resting:
                continue
            pending = deferred_rechecks(self.session, segment.id, _RETRY_CHUNK)
            try:
                with self.session.begin_nested():
                    parsed(segment)
                    for organic in (True, False):
                        ids = [pid for pid, o in pending if o is organic]
                        if ids:
                            refresh(self.session, segment, self.now, ids, organic=organic)
                    settle_rechecks(self.session, segment.id, [pid for pid, _ in pending])
            except Exception as exc:
                if is_transient(exc):
                    raise
                self._failed(segment.id, exc)
                continue
            self._recovered(segment.id)

    def _failed(self, segment_id: str, exc: BaseException) -> None:
        row = self.health.get(segment_id)
        failures = (row.failures if row else 0) + 1
        total = (row.total_failures if row else 0) + 1
        delay = self.retry_seconds * 2 ** min(failures - 1, _MAX_BACKOFF_DOUBLINGS)
        values = {
            "segment_id": segment_id,
            "failures": failures,
            "total_failures": total,
            "last_error": describe(exc),
            "last_failed_at": self.now,
            "retry_after": self.now + timedelta(seconds=delay),
        }
        self._upsert(values)
        self.failures[segment_id] = values
        self.resting.add(segment_id)
        count_segment_failure(segment_id)
        log.warning(
            "segment re-check failed: deferred",
            segment_id=segment_id,
            failures=failures,
            retry_in_seconds=delay,
            error=values["last_error"],
        )

    def _recovered(self, segment_id: str) -> None:
        row = self.health.get(segment_id)
        self.failures.pop(segment_id, None)
        if row is not None and row.failures:
            self._upsert({**row._asdict(), "failures": 0, "retry_after": None})

    def _upsert(self, values: dict) -> None:
        dialect = self.session.get_bind().dialect.name
        stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_health).values(
            values
        )
        update = {k: v for k, v in values.items() if k != "segment_id"}
        self.session.execute(stmt.on_conflict_do_update(index_elements=["segment_id"], set_=update))
        segment_id = values["segment_id"]
        self.health[segment_id] = self.session.execute(
            select(_health).where(_health.c.segment_id == segment_id)
        ).one()
