"""The router's activity: claim pending outbox rows, hand them to every handler, commit."""

import time
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity

from herald.db import session_scope
from herald.routing import RoutedItem, RoutingHandler
from models.enums import OutboxKind
from models.events import Event, Metric
from models.routing import RoutingOutbox
from models.types import utcnow

# How often an idle router looks for new rows while it long-polls.
_IDLE_POLL_SECONDS = 0.05


class RouterActivities:
    def __init__(
        self,
        engine: Engine,
        handlers: Sequence[RoutingHandler],
        batch_size: int = 500,
        poll_seconds: float = 5.0,
    ):
        self.engine = engine
        self.handlers = list(handlers)
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds

    @activity.defn(name="route_pending")
    def route_pending(self) -> int:
        """Routes one batch; when there is none, waits up to poll_seconds for one to appear.

        Long-polling here (not timers in the workflow) keeps the router's history at a handful
        of events per batch instead of per poll.
        """
        deadline = time.monotonic() + self.poll_seconds
        while True:
            routed = self.route_once()
            if routed or time.monotonic() >= deadline:
                return routed
            activity.heartbeat()
            time.sleep(_IDLE_POLL_SECONDS)

    def route_once(self) -> int:
        with session_scope(self.engine) as session:
            items = self._claim(session)
            if items:
                for handler in self.handlers:
                    handler.handle(session, items)
        # Committed: now the effects outside the database (Temporal starts and signals).
        for handler in self.handlers:
            after_commit = getattr(handler, "after_commit", None)
            if after_commit is not None:
                after_commit(self.engine)
        return len(items)

    def _claim(self, session: Session) -> list[RoutedItem]:
        outbox = RoutingOutbox.__table__
        pending = (
            select(outbox.c.id)
            .where(outbox.c.routed_at.is_(None))
            .order_by(outbox.c.id)
            .limit(self.batch_size)
        )
        if session.get_bind().dialect.name == "postgresql":
            # A zombie activity from a lost worker may still be running: never claim twice.
            pending = pending.with_for_update(skip_locked=True)
        ids = list(session.execute(pending).scalars())
        if not ids:
            return []
        claimed = set(
            session.execute(
                update(outbox)
                .where(outbox.c.id.in_(ids), outbox.c.routed_at.is_(None))
                .values(routed_at=utcnow())
                .returning(outbox.c.id)
            ).scalars()
        )
        event, metric = Event.__table__, Metric.__table__
        rows = session.execute(
            select(
                outbox.c.id,
                outbox.c.kind,
                outbox.c.profile_id,
                outbox.c.backfill,
                outbox.c.event_id,
                outbox.c.list_id,
                outbox.c.segment_id,
                event.c.metric_id,
                metric.c.name,
                event.c.time,
                event.c.value,
                event.c.properties,
                event.c.unique_id,
            )
            .select_from(outbox)
            .outerjoin(event, event.c.id == outbox.c.event_id)
            .outerjoin(metric, metric.c.id == event.c.metric_id)
            .where(outbox.c.id.in_(claimed))
            .order_by(outbox.c.id)
        )
        return [
            RoutedItem(
                outbox_id=r.id,
                kind=OutboxKind(r.kind),
                profile_id=r.profile_id,
                backfill=r.backfill,
                event_id=r.event_id,
                metric_id=r.metric_id,
                metric=r.name,
                time=r.time,
                value=r.value,
                properties=r.properties,
                unique_id=r.unique_id,
                list_id=r.list_id,
                segment_id=r.segment_id,
            )
            for r in rows
        ]
