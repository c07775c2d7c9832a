"""Materialized segment membership: full and incremental recomputes, and what they announce.

Membership rows are the compiled definition's result (herald/segment_sql.py), written by one
INSERT ... SELECT and one DELETE per segment and scope, so a recompute never moves profile ids
through Python. Organic changes of a live segment (routed events, profile changes, the refresh
schedule, RFM runs) are written to the routing outbox as segment_added / segment_removed in the
same transaction, which is what starts "added to segment" flows. Saving a definition recomputes
with `organic=False`: the new members were not "added" by anything they did.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, false, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from herald.segment_definition import Dependencies, SegmentDefinition, dependencies
from herald.segment_sql import profile, segment_clause
from models.enums import OutboxKind
from models.routing import RoutingOutbox
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
    scope = [] if ids is None else [profile.c.id.in_(ids)]
    joins = (
        select(literal(segment_id), profile.c.id, literal(now, UTCDateTime()))
        .where(clause, *scope)
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
    leave = _membership.delete().where(_membership.c.segment_id == segment_id)
    if ids is None:
        still_in = (
            select(literal(1))
            .select_from(profile)
            .where(profile.c.id == _membership.c.profile_id, clause)
            .exists()
        )
        leave = leave.where(~still_in)
    else:
        # Driven by the profiles in scope, so each removal is a primary-key probe whatever
        # PostgreSQL's (generic, prepared) plan thinks of the segment's size.
        out = select(profile.c.id).where(profile.c.id.in_(ids), ~func.coalesce(clause, false()))
        leave = leave.where(_membership.c.profile_id.in_(out))
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
    if organic and segment.status == "live":
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


def _affected(
    deps: Dependencies,
    *,
    rfm: bool,
    profile_changed: bool,
    metrics: Iterable[str],
    lists: Iterable[str],
    journey: bool,
    relative: bool,
) -> bool:
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

    Draft segments are kept current too (their member lists and counts are what a marketer
    checks before going live); only live ones announce their changes, and only organic ones
    (backfilled history moves members without starting flows).
    """
    metrics, lists = frozenset(metrics), frozenset(lists)
    if profile_ids is not None and not profile_ids:
        return {}
    changed: dict[str, Delta] = {}
    for segment in session.exec(select(Segment).order_by(Segment.id)).scalars():
        _, deps = parsed(segment)
        hit = _affected(
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
