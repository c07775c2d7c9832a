"""The routing seam: what the router hands to handlers, and the contract handlers keep.

The router claims a batch of outbox rows (oldest first) and calls every handler, in order, inside
the transaction that marks the rows routed. So:
- a handler's database writes commit exactly once with the claim, or not at all;
- a handler's effects outside the database (starting or signalling workflows) may run again if the
  process dies before the commit, so they must be idempotent by a key derived from the item
  (e.g. a workflow ID built from the event's unique_id);
- items arrive in outbox order, so events of one profile are seen in the order they were accepted.

When a batch fails, the router splits it and routes each half in its own transaction, until the
item that fails on its own is found; that item is parked in `routing_dead_letter` (see `park`)
and everything else commits. A handler may therefore see an item again after a failed attempt,
and `handle` must replace (not add to) whatever it keeps for `after_commit`. Every statement runs
under a time budget (`router_statement_timeout_seconds`); a handler that loops over independent
units of work (segments) isolates each in a savepoint rather than fail the batch.
"""

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session
from temporalio import activity

from models.enums import OutboxKind
from models.routing import RoutingDeadLetter, RoutingOutbox

# Each failure is counted twice over: in this process's prometheus_client registry, and, inside
# an activity, through Temporal's metric meter, which the worker serves on worker_metrics_port
# (the worker exposes no other endpoint). Same name, `_total` included, on both.
_DEAD_LETTERS = "herald_routing_dead_letters_total"
_SEGMENT_FAILURES = "herald_routing_segment_failures_total"
_DESCRIPTIONS = {
    _DEAD_LETTERS: "Outbox rows parked because they failed on their own",
    _SEGMENT_FAILURES: "Incremental segment re-checks that failed (their profiles are deferred)",
}
_COUNTERS = {
    _DEAD_LETTERS: Counter(
        _DEAD_LETTERS.removesuffix("_total"), _DESCRIPTIONS[_DEAD_LETTERS], ["handler"]
    ),
    _SEGMENT_FAILURES: Counter(
        _SEGMENT_FAILURES.removesuffix("_total"), _DESCRIPTIONS[_SEGMENT_FAILURES], ["segment_id"]
    ),
}


def _count(name: str, **labels: str) -> None:
    _COUNTERS[name].labels(**labels).inc()
    if activity.in_activity():
        # Counting must never be what fails the routing.
        with contextlib.suppress(RuntimeError):
            activity.metric_meter().create_counter(name, _DESCRIPTIONS[name]).add(1, labels)


def count_segment_failure(segment_id: str) -> None:
    _count(_SEGMENT_FAILURES, segment_id=segment_id)


_ERROR_CHARS = 2000


@dataclass(frozen=True)
class RoutedItem:
    outbox_id: int
    kind: OutboxKind
    profile_id: str
    backfill: bool
    # Set for kind == event:
    event_id: int | None = None
    metric_id: int | None = None
    metric: str | None = None
    time: datetime | None = None
    value: float | None = None
    properties: dict[str, Any] | None = None
    unique_id: str | None = None
    # Set for kind == list_added:
    list_id: str | None = None
    # Set for kind == segment_added / segment_removed:
    segment_id: str | None = None


class RoutingHandler(Protocol):
    name: str

    def handle(self, session: Session, items: list[RoutedItem]) -> None: ...


def describe(exc: BaseException) -> str:
    """What an operator reads about a failure: its type and message, bounded. For a database
    error, the driver's own (the statement it ran is in the log, not in every status read)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return f"{type(exc).__name__}: {exc}".strip()[:_ERROR_CHARS]


def park(session: Session, outbox_id: int, handler: str, error: str, now: datetime) -> bool:
    """Parks one pending outbox row: marked routed, so later rows (of its profile too) route past
    it. False when it is no longer pending (another router routed it meanwhile)."""
    outbox = RoutingOutbox.__table__
    marked = session.execute(
        update(outbox)
        .where(outbox.c.id == outbox_id, outbox.c.routed_at.is_(None))
        .values(routed_at=now)
        .returning(outbox.c.id)
    ).scalar()
    if marked is None:
        return False
    session.execute(
        insert(RoutingDeadLetter.__table__).values(
            outbox_id=outbox_id, handler=handler[:100], error=error[:_ERROR_CHARS], parked_at=now
        )
    )
    _count(_DEAD_LETTERS, handler=handler)
    return True


def requeue(session: Session, dead_letter_id: int) -> int | None:
    """Puts a parked row back in the outbox; returns its outbox id, None if there is none.

    The row keeps its id, so the router claims it first, after the later rows of its profile
    that were routed while it was parked.
    """
    letters = RoutingDeadLetter.__table__
    outbox_id = session.execute(
        delete(letters).where(letters.c.id == dead_letter_id).returning(letters.c.outbox_id)
    ).scalar()
    if outbox_id is None:
        return None
    outbox = RoutingOutbox.__table__
    session.execute(update(outbox).where(outbox.c.id == outbox_id).values(routed_at=None))
    return outbox_id


def dead_letter_count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(RoutingDeadLetter)).scalar_one()


# Workflows call these by method reference (names and result types come from here); the
# implementing class in activities/ subclasses it and decorates its methods with the same names.
class RouterActivitiesContract:
    """activities/routing.py"""

    @activity.defn(name="route_pending")
    def route_pending(self) -> int:
        raise NotImplementedError
