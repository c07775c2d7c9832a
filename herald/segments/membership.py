"""Materialized segment membership: full and incremental recomputes, and what they announce.

Membership rows are the compiled definition's result (herald/segments/sql.py), written by one
INSERT ... SELECT and one DELETE per segment and scope, so a recompute never moves profile ids
through Python. Organic changes of a live segment (routed events, profile changes, the refresh
schedule, RFM runs) are written to the routing outbox as segment_added / segment_removed in the
same transaction, which is what starts "added to segment" flows. Saving a definition recomputes
with `organic=False`: the new members were not "added" by anything they did.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from herald.segments.definition import Dependencies, SegmentDefinition, dependencies
from herald.segments.sql import profile, segment_clause
from models.enums import OutboxKind, SegmentStatus
from models.routing import RoutingOutbox, SegmentRecheck, SegmentRoutingHealth
from models.segments import Segment, SegmentMembership
from models.types import UTCDateTime

_membership = SegmentMembership.__table__
_outbox = RoutingOutbox.__table__
_segment = Segment.__table__
# Profile ids per statement: well under SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500


@dataclass
class Delta:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


# Parsed definitions by (segment id, version): routing looks at every segment's dependencies on
# every batch, and parsing is the expensive part.
_parsed: dict[tuple[str, int], tuple[SegmentDefinition, Dependencies]] = {}


def parsed(segment: Segment) -> tuple[SegmentDefinition, Dependencies]:
    key = (segment.id, segment.version)
    if key not in _parsed:
        definition = SegmentDefinition.model_validate(segment.definition)
        _parsed[key] = (definition, dependencies(definition))
    return _parsed[key]


def _insert(session: Session):
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_membership)


def _apply(
    session: Session,
    segment_id: str,
    clause: ColumnElement[bool],
    ids: list[str] | None,
    now: datetime,
) -> Delta:
    if ids is not None:
        return _apply_to(session, segment_id, clause, ids, now)
    joins = (
        select(literal(segment_id), profile.c.id, literal(now, UTCDateTime()))
        .where(clause)
        .where(
            ~select(literal(1))
            .where(
                _membership.c.segment_id == segment_id,
                _membership.c.profile_id == profile.c.id,
            )
            .exists()
        )
    )
    added = session.execute(
        _insert(session)
        .from_select(["segment_id", "profile_id", "added_at"], joins)
        .on_conflict_do_nothing()
        .returning(_membership.c.profile_id)
    ).scalars()
    delta = Delta(added=list(added))
    still_in = (
        select(literal(1))
        .select_from(profile)
        .where(profile.c.id == _membership.c.profile_id, clause)
        .exists()
    )
    leave = _membership.delete().where(_membership.c.segment_id == segment_id, ~still_in)
    delta.removed = list(session.execute(leave.returning(_membership.c.profile_id)).scalars())
    return delta


def _apply_to(
    session: Session, segment_id: str, clause: ColumnElement[bool], ids: list[str], now: datetime
) -> Delta:
    """The incremental case: one read evaluates the definition for the profiles in scope, then
    two key-driven writes apply the answer.

    Evaluating once (not in both an INSERT ... SELECT and a DELETE) halves the expensive part, and
    keeping it in a read means a statement cancelled by the routing budget never rolls back the
    router's SQLite transaction (SQLite undoes a whole transaction when a write is interrupted).
    """
    matching = set(session.execute(select(profile.c.id).where(profile.c.id.in_(ids), clause)))
    inside = [pid for (pid,) in matching]
    delta = Delta()
    if inside:
        rows = [{"segment_id": segment_id, "profile_id": pid, "added_at": now} for pid in inside]
        delta.added = list(
            session.execute(
                _insert(session)
                .values(rows)
                .on_conflict_do_nothing()
                .returning(_membership.c.profile_id)
            ).scalars()
        )
    outside = sorted(set(ids) - set(inside))
    if outside:
        leave = _membership.delete().where(
            _membership.c.segment_id == segment_id, _membership.c.profile_id.in_(outside)
        )
        delta.removed = list(session.execute(leave.returning(_membership.c.profile_id)).scalars())
    return delta


def refresh(
    session: Session,
    segment: Segment,
    now: datetime,
    profile_ids: Sequence[str] | None = None,
    organic: bool = True,
) -> Delta:
    """Brings the segment's membership up to date at `now`, for some profiles or for everyone.

    Organic changes of a live segment are announced in the routing outbox.
    """
    definition, _ = parsed(segment)
    clause = segment_clause(definition, now)
    delta = Delta()
    if profile_ids is None:
        delta = _apply(session, segment.id, clause, None, now)
    else:
        ids = sorted(set(profile_ids))
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            part = _apply(session, segment.id, clause, chunk, now)
            delta.added += part.added
            delta.removed += part.removed
    if organic and segment.status == SegmentStatus.live:
        _announce(session, segment.id, delta, now)
    if profile_ids is None:
        segment.member_count = session.execute(
            select(func.count())
            .select_from(_membership)
            .where(_membership.c.segment_id == segment.id)
        ).scalar_one()
        segment.computed_at = now
        session.add(segment)
    elif delta.added or delta.removed:
        # An increment in SQL: the router and a schedule may refresh the segment concurrently,
        # and each delta is exactly what its own statements changed.
        session.execute(
            update(_segment)
            .where(_segment.c.id == segment.id)
            .values(member_count=_segment.c.member_count + len(delta.added) - len(delta.removed))
        )
        session.expire(segment, ["member_count"])
    return delta


def _announce(session: Session, segment_id: str, delta: Delta, now: datetime) -> None:
    changes = ((OutboxKind.segment_added, delta.added), (OutboxKind.segment_removed, delta.removed))
    rows = [
        {"kind": kind.value, "profile_id": pid, "segment_id": segment_id, "created_at": now}
        for kind, ids in changes
        for pid in ids
    ]
    if rows:
        session.execute(insert(_outbox), rows)


def affected(
    deps: Dependencies,
    *,
    rfm: bool = False,
    profile_changed: bool = False,
    metrics: Iterable[str] = frozenset(),
    lists: Iterable[str] = frozenset(),
    journey: bool = False,
    relative: bool = False,
) -> bool:
    """Can what changed (RFM groups, profile data, events of `metrics`, ...) move its members?"""
    return (
        (rfm and deps.rfm)
        or (profile_changed and deps.profile)
        or bool(deps.metrics & set(metrics))
        or bool(deps.lists & set(lists))
        or (journey and deps.journey)
        or (relative and deps.relative)
    )


def refresh_dependents(
    session: Session,
    profile_ids: Sequence[str] | None,
    now: datetime,
    *,
    rfm: bool = False,
    profile: bool = False,
    metrics: Iterable[str] = frozenset(),
    lists: Iterable[str] = frozenset(),
    journey: bool = False,
    relative: bool = False,
    organic: bool = True,
) -> dict[str, Delta]:
    """Re-checks, for some profiles (None: everyone), every segment that what changed can affect.

    Used by the RFM run and the refresh schedule (full recomputes off the routing path), which
    keep draft segments current too; routing re-checks live segments only, each isolated
    (activities/segment_routing.py). Only live segments announce their changes, and only organic
    ones (backfilled history moves members without starting flows).
    """
    metrics, lists = frozenset(metrics), frozenset(lists)
    if profile_ids is not None and not profile_ids:
        return {}
    changed: dict[str, Delta] = {}
    for segment in session.exec(select(Segment).order_by(Segment.id)).scalars():
        _, deps = parsed(segment)
        hit = affected(
            deps,
            rfm=rfm,
            profile_changed=profile,
            metrics=metrics,
            lists=lists,
            journey=journey,
            relative=relative,
        )
        if hit:
            delta = refresh(session, segment, now, profile_ids, organic=organic)
            if delta.added or delta.removed:
                changed[segment.id] = delta
    return changed


def is_member(session: Session, segment_id: str, profile_id: str, now: datetime) -> bool:
    """Does the profile match the segment's definition right now? False once it is deleted.

    Evaluates the compiled definition for this one profile rather than reading the materialized
    rows, so a split or a send never acts on membership older than the data.
    """
    segment = session.get(Segment, segment_id)
    if segment is None:
        return False
    definition, _ = parsed(segment)
    query = select(profile.c.id).where(profile.c.id == profile_id, segment_clause(definition, now))
    return session.execute(query.exists().select()).scalar() is True


def segment_clauses(
    session: Session, segment_ids: Iterable[str], now: datetime
) -> dict[str, ColumnElement[bool]]:
    """The compiled definition of each existing segment, for audiences to combine.

    A missing id is left out: the audience that names it refuses to guess who it meant.
    """
    out = {}
    for segment_id in sorted(set(segment_ids)):
        segment = session.get(Segment, segment_id)
        if segment is not None:
            out[segment_id] = segment_clause(parsed(segment)[0], now)
    return out


# ---- deferred re-checks ------------------------------------------------------------------------
#
# Routing defers the re-checks of a live segment that failed (a statement over its budget, a
# definition that no longer parses) instead of failing the batch: the profiles wait in
# `segment_recheck`, the segment's failures in `segment_routing_health`, and a later batch retries
# after a back-off. Anything that recomputes the segment in full settles them.

_recheck = SegmentRecheck.__table__
_health = SegmentRoutingHealth.__table__


def defer_rechecks(
    session: Session, segment_id: str, profile_ids: Sequence[str], organic: bool, now: datetime
) -> None:
    ids = sorted(set(profile_ids))
    dialect = session.get_bind().dialect.name
    for start in range(0, len(ids), _CHUNK):
        rows = [
            {"segment_id": segment_id, "profile_id": pid, "organic": organic, "deferred_at": now}
            for pid in ids[start : start + _CHUNK]
        ]
        stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_recheck).values(
            rows
        )
        # Announced if any deferred change was organic (see SegmentRecheck).
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["segment_id", "profile_id"],
                set_={"organic": or_(_recheck.c.organic, stmt.excluded.organic)},
            )
        )


def deferred_rechecks(session: Session, segment_id: str, limit: int) -> list[tuple[str, bool]]:
    """Some of the segment's deferred (profile id, organic) pairs, oldest profile ids first."""
    rows = session.execute(
        select(_recheck.c.profile_id, _recheck.c.organic)
        .where(_recheck.c.segment_id == segment_id)
        .order_by(_recheck.c.profile_id)
        .limit(limit)
    )
    return [(pid, bool(organic)) for pid, organic in rows]


def settle_rechecks(session: Session, segment_id: str, profile_ids: Sequence[str]) -> None:
    ids = sorted(set(profile_ids))
    for start in range(0, len(ids), _CHUNK):
        session.execute(
            _recheck.delete().where(
                _recheck.c.segment_id == segment_id,
                _recheck.c.profile_id.in_(ids[start : start + _CHUNK]),
            )
        )


def forget_rechecks(session: Session, segment_id: str) -> None:
    """After a full recompute (or going back to draft): nothing deferred is owed any more."""
    session.execute(_recheck.delete().where(_recheck.c.segment_id == segment_id))
    session.execute(
        update(_health)
        .where(_health.c.segment_id == segment_id)
        .values(failures=0, retry_after=None)
    )
