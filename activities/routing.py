"""The router's activity: claim pending outbox rows, hand them to every handler, commit.

A batch that fails is split in halves, each routed in its own transaction, until the row that
fails alone is found and parked (herald/routing/contract.py:park); the rest commits in outbox
order. Errors about the moment (a lost connection, lock contention) are not blamed on the rows:
they fail the activity, which Temporal retries with back-off. A failure that raises nothing (the
worker dies, the activity times out) is caught on the retry: that attempt routes the oldest row
alone and counts the try first, so a row that kills its worker is parked after a few tries.
Every statement runs under `router_statement_timeout_seconds`.
"""

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator, Sequence

import structlog
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import CancelledError

from herald.core.config import get_settings
from herald.core.db import is_transient, session_scope, statement_budget
from herald.routing.contract import (
    RoutedItem,
    RouterActivitiesContract,
    RoutingHandler,
    describe,
    park,
)
from models.enums import OutboxKind
from models.events import Event, Metric
from models.routing import RoutingOutbox
from models.types import utcnow

log = structlog.get_logger("herald.routing")

# How often an idle router looks for new rows while it long-polls.
_IDLE_POLL_SECONDS = 0.05
# Well under the router activity's 10 s heartbeat timeout.
_HEARTBEAT_SECONDS = 2.0
# A row whose routing started this many times on its own and never finished is parked.
_UNFINISHED_ATTEMPTS = 3


@contextlib.contextmanager
def _heartbeating() -> Iterator[None]:
    """Heartbeats from a thread of its own while the activity routes.

    A heartbeat of a threaded activity waits for the worker's event loop; sent from the routing
    thread it would wait while holding the database (SQLite's write lock), and a long batch of
    fast statements would otherwise miss the heartbeat timeout and be retried while it runs.
    """
    stop = threading.Event()
    context = contextvars.copy_context()

    def beat() -> None:
        while not stop.wait(_HEARTBEAT_SECONDS):
            try:
                activity.heartbeat()
            except Exception:  # cancelled or the loop is busy: the routing thread goes on
                return

    thread = threading.Thread(target=context.run, args=(beat,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class BatchFailed(Exception):
    """Routing these outbox rows failed in `stage` (a handler's name, "claim" or "commit")."""

    def __init__(self, ids: list[int], stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {describe(cause)}")
        self.ids, self.stage, self.cause = ids, stage, cause


class RouterActivities(RouterActivitiesContract):
    def __init__(
        self,
        engine: Engine,
        handlers: Sequence[RoutingHandler],
        batch_size: int = 500,
        poll_seconds: float = 5.0,
        statement_timeout_seconds: float | None = None,
    ):
        self.engine = engine
        self.handlers = list(handlers)
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        if statement_timeout_seconds is None:
            statement_timeout_seconds = get_settings().router_statement_timeout_seconds
        self.statement_timeout = statement_timeout_seconds
        self.unfinished_attempts = _UNFINISHED_ATTEMPTS
        # After a rolled-back batch, handlers may still hold its effects for after_commit: they
        # are only released after a batch that every handler saw again commits.
        self._effects_unsafe = False

    @activity.defn(name="route_pending")
    def route_pending(self) -> int:
        """Routes one batch; when there is none, waits up to poll_seconds for one to appear.

        Long-polling here (not timers in the workflow) keeps the router's history at a handful
        of events per batch instead of per poll.
        """
        with _heartbeating():
            if activity.info().attempt > 1:
                # The previous attempt failed, perhaps without a word (a crash, a timeout): go
                # one row at a time, counting unfinished tries, until a row is routed or parked.
                routed = self.route_oldest_alone()
                if routed:
                    return routed
            deadline = time.monotonic() + self.poll_seconds
            while True:
                routed = self.route_once()
                if routed or time.monotonic() >= deadline or activity.is_worker_shutdown():
                    return routed  # on shutdown: the next worker goes on where this one stopped
                activity.heartbeat()
                time.sleep(_IDLE_POLL_SECONDS)

    def route_once(self) -> int:
        """Routes the oldest pending batch; returns how many rows it routed or parked."""
        try:
            return self._route(None)
        except BatchFailed as failure:
            if is_transient(failure.cause) or not failure.ids:
                raise failure.cause from None
            log.warning(
                "routing batch failed: splitting it",
                rows=len(failure.ids),
                stage=failure.stage,
                error=describe(failure.cause),
            )
            return self._split(failure)

    def route_oldest_alone(self) -> int:
        """Routes the oldest pending row on its own, after counting the try in a committed
        transaction; a row whose earlier tries never finished is parked instead.

        Exceptions are caught and split by `route_once`; this catches what never returns (a
        worker that dies on the row, a handler that hangs past the activity timeout).
        """
        outbox = RoutingOutbox.__table__
        with session_scope(self.engine) as session:
            oldest = (
                select(outbox.c.id, outbox.c.attempts)
                .where(outbox.c.routed_at.is_(None))
                .order_by(outbox.c.id)
                .limit(1)
            )
            if session.get_bind().dialect.name == "postgresql":
                oldest = oldest.with_for_update(skip_locked=True)
            row = session.execute(oldest).first()
            if row is None:
                return 0
            if row.attempts >= self.unfinished_attempts:
                error = (
                    f"routing this row alone started {row.attempts} times and never finished "
                    "(the worker died or the activity timed out)"
                )
                log.error("routing item parked", outbox_id=row.id, error=error)
                return 1 if park(session, row.id, "router", error, utcnow()) else 0
            session.execute(
                update(outbox).where(outbox.c.id == row.id).values(attempts=outbox.c.attempts + 1)
            )
        try:
            return self._route([row.id])
        except BatchFailed as failure:
            if is_transient(failure.cause) or not failure.ids:
                self._uncount(row.id)
                raise failure.cause from None
            return self._split(failure)

    def _uncount(self, outbox_id: int) -> None:
        """The try finished, with an error about the moment: it must not count towards parking."""
        outbox = RoutingOutbox.__table__
        with contextlib.suppress(Exception), session_scope(self.engine) as session:
            session.execute(
                update(outbox)
                .where(outbox.c.id == outbox_id, outbox.c.attempts > 0)
                .values(attempts=outbox.c.attempts - 1)
            )

    def _split(self, failure: BatchFailed) -> int:
        ids = failure.ids
        if len(ids) == 1:
            return self._park(ids[0], failure)
        routed = 0
        middle = len(ids) // 2
        for part in (ids[:middle], ids[middle:]):  # in outbox order: the first half commits first
            try:
                routed += self._route(part)
            except BatchFailed as again:
                if is_transient(again.cause):
                    raise again.cause from None
                routed += self._split(again) if again.ids else 0
        return routed

    def _park(self, outbox_id: int, failure: BatchFailed) -> int:
        log.error(
            "routing item parked", outbox_id=outbox_id, stage=failure.stage, error=str(failure)
        )
        with session_scope(self.engine) as session:
            parked = park(session, outbox_id, failure.stage, describe(failure.cause), utcnow())
        return 1 if parked else 0

    def _route(self, ids: list[int] | None) -> int:
        """One transaction: claim the oldest batch (or exactly `ids`), run the handlers, commit."""
        items: list[RoutedItem] = []
        stage = "claim"
        try:
            with session_scope(self.engine) as session:
                with statement_budget(session, self.statement_timeout):
                    items = self._claim(session, ids)
                    for handler in self.handlers if items else ():
                        stage = handler.name
                        handler.handle(session, items)
                stage = "commit"
        except CancelledError:
            # The worker is shutting down or the activity timed out: not the rows' fault.
            self._effects_unsafe = True
            raise
        except Exception as exc:
            self._effects_unsafe = True
            raise BatchFailed([i.outbox_id for i in items], stage, exc) from exc
        if items:
            self._effects_unsafe = False
        if not self._effects_unsafe:
            # Committed: now the effects outside the database (Temporal starts and signals).
            for handler in self.handlers:
                after_commit = getattr(handler, "after_commit", None)
                if after_commit is not None:
                    after_commit(self.engine)
        return len(items)

    def _claim(self, session: Session, ids: list[int] | None = None) -> list[RoutedItem]:
        outbox = RoutingOutbox.__table__
        pending = select(outbox.c.id).where(outbox.c.routed_at.is_(None)).order_by(outbox.c.id)
        if ids is None:
            pending = pending.limit(self.batch_size)
        else:
            pending = pending.where(outbox.c.id.in_(ids))
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
