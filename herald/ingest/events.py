"""Event ingestion: resolve profiles, store events once, announce them to the router.

Everything for one request happens in one transaction: the events and their outbox rows commit
together or not at all, so a 2xx always means "stored and will be routed" (SPEC invariant 3).
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from herald.core.db import session_scope
from herald.core.sql import insert_ignoring_conflicts
from herald.ingest.catalogue import is_builtin
from herald.profiles.changes import announce_profile_changes
from herald.profiles.resolution import IdentityIndex
from models.enums import OutboxKind
from models.events import Event, EventIn, EventProfile, Metric
from models.routing import RoutingOutbox
from models.types import utcnow


@dataclass(frozen=True)
class Ingested:
    event_id: int
    profile_id: str
    duplicate: bool


def dedup_key(event: EventIn, at: datetime) -> str:
    """SPEC: the event's unique_id, or else its time truncated to the second."""
    if event.unique_id:
        return event.unique_id
    return at.astimezone(UTC).replace(microsecond=0).isoformat()


class MetricDirectory:
    """Metric name -> id, created on first use. Metrics are never deleted, so ids can be cached.

    New metrics are committed in their own short transaction, before the events that use them:
    caching an id from a transaction that later rolls back would poison every later insert.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def ids_for(self, engine: Engine, names: set[str]) -> dict[str, int]:
        missing = names - self._ids.keys()
        if missing:
            with session_scope(engine) as session:
                session.execute(
                    insert_ignoring_conflicts(session, Metric.__table__),
                    [
                        {"name": n, "builtin": is_builtin(n), "created_at": utcnow()}
                        for n in sorted(missing)
                    ],
                )
                rows = session.execute(
                    select(Metric.id, Metric.name).where(Metric.name.in_(missing))
                )
                found = dict((name, metric_id) for metric_id, name in rows)
            self._ids.update(found)
        return {n: self._ids[n] for n in names}


def ingest(engine, metrics: MetricDirectory, events: list[EventIn], source: str) -> list[Ingested]:
    """Store a batch of valid events; returns one result per input, in order.

    Two concurrent requests may both try to create the same new profile on PostgreSQL; the loser
    gets a unique violation, and retrying sees the winner's profile.
    """
    metric_ids = metrics.ids_for(engine, {e.metric for e in events})
    for attempt in range(3):
        try:
            with session_scope(engine) as session:
                return _ingest(session, metric_ids, events, source)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _ingest(
    session: Session, metric_ids: dict[str, int], events: list[EventIn], source: str
) -> list[Ingested]:
    now = utcnow()
    index = IdentityIndex(session, (e.profile for e in events))
    resolved = [index.resolve(e.profile, e.profile) for e in events]
    profiles = [profile for profile, _ in resolved]
    session.flush()  # new profiles get their rows before events reference them
    # New profiles, and ones the events' attributes may have changed, re-check their segments.
    announce_profile_changes(
        session,
        (
            p.id
            for (p, created), e in zip(resolved, events, strict=True)
            if created or _has_attributes(e.profile)
        ),
        now,
    )

    rows = []
    for event, profile in zip(events, profiles, strict=True):
        at = event.time or now
        rows.append(
            {
                "profile_id": profile.id,
                "metric_id": metric_ids[event.metric],
                "time": at,
                "value": event.value,
                "properties": event.properties,
                "unique_id": dedup_key(event, at),
                "source": source,
                "received_at": now,
            }
        )
    stmt = insert_ignoring_conflicts(session, Event.__table__).returning(
        Event.__table__.c.id,
        Event.__table__.c.profile_id,
        Event.__table__.c.metric_id,
        Event.__table__.c.unique_id,
    )
    inserted = {(r.profile_id, r.metric_id, r.unique_id): r.id for r in session.execute(stmt, rows)}

    outbox, results, seen = [], [], set()
    for event, row in zip(events, rows, strict=True):
        key = (row["profile_id"], row["metric_id"], row["unique_id"])
        event_id = inserted.get(key)
        if event_id is not None and key not in seen:
            seen.add(key)
            outbox.append(
                {
                    "kind": OutboxKind.event.value,
                    "profile_id": row["profile_id"],
                    "event_id": event_id,
                    "list_id": None,
                    "backfill": event.backfill,
                    "created_at": now,
                    "routed_at": None,
                }
            )
            results.append(Ingested(event_id, row["profile_id"], duplicate=False))
        else:
            results.append(Ingested(event_id or 0, row["profile_id"], duplicate=True))
    _fill_duplicate_ids(session, results, rows)
    if outbox:
        session.execute(RoutingOutbox.__table__.insert(), outbox)
    return results


def _has_attributes(profile: EventProfile) -> bool:
    return bool(
        profile.properties
        or any(
            getattr(profile, name) is not None
            for name in ("first_name", "last_name", "timezone", "push_tokens")
        )
    )


def _fill_duplicate_ids(session: Session, results: list[Ingested], rows: list[dict]) -> None:
    """A duplicate reports the id of the event stored first, so clients can correlate."""
    for i, result in enumerate(results):
        if result.duplicate and result.event_id == 0:
            row = rows[i]
            existing = session.execute(
                select(Event.id).where(
                    Event.profile_id == row["profile_id"],
                    Event.metric_id == row["metric_id"],
                    Event.unique_id == row["unique_id"],
                )
            ).scalar_one()
            results[i] = Ingested(existing, row["profile_id"], duplicate=True)
