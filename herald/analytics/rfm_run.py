"""RFM runs: read every customer's orders, score them (herald/analytics/rfm_scoring.py), store.

A completed run upserts the `rfm_score` row of every customer who is new or whose scores changed
(`run_id` names the run that last changed the row; rows that did not change are not rewritten).
When a customer's group changes (or is assigned for the first time), `previous_group` becomes
the old group and `changed_at` becomes `as_of`; otherwise both keep their values. The same three
facts are mirrored into the properties of the profiles whose group changed (`rfm_group`,
`rfm_previous_group`, `rfm_group_changed_at`) so that templates and property conditions see
them, and segments that depend on RFM groups or profile properties are refreshed for those
profiles. Runs take a lock (PostgreSQL: an advisory lock; SQLite: the write lock every
transaction takes), so two runs never interleave.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, select, text, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session

from herald.analytics.rfm_scoring import (
    RECENT_DAYS,
    CustomerOrders,
    Score,
    eligibility,
    score_customers,
)
from herald.core.ids import new_id
from herald.core.sql import upsert
from herald.segments.definition import RFM_GROUPS
from models.events import Event, Metric
from models.profile import Profile
from models.segments import RfmRun, RfmScore
from models.types import utcnow

ORDER_METRIC = "Placed Order"

COMPLETED = "completed"
INELIGIBLE = "ineligible"

# Rows per executemany: large enough to amortise round trips, small enough to bound memory.
WRITE_CHUNK = 2000
# Any constant works; it only has to be the same in every process.
_PG_LOCK_KEY = 0x52464D  # "RFM"


# ---- the run ---------------------------------------------------------------------------------


@dataclass
class RfmOutcome:
    run: RfmRun
    # Profiles whose group changed (or was first assigned) in this run; kept out of the report.
    changed_profile_ids: list[str] = field(default_factory=list)


def run_rfm(session: Session, as_of: datetime, run_id: str | None = None) -> RfmOutcome:
    """Scores every customer as of `as_of` and stores the run (completed or ineligible)."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    as_of = as_of.astimezone(UTC)
    run_id = run_id or new_id("rfm")
    _lock(session)
    customers = order_totals(session, as_of)
    requirements = eligibility(customers, as_of)
    report: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "customers": len(customers or []),
        "requirements": [r.report() for r in requirements],
    }
    if not customers or not all(r.met for r in requirements):
        report["unmet"] = [r.report() for r in requirements if not r.met]
        run = RfmRun(id=run_id, status=INELIGIBLE, as_of=as_of, report=report)
        session.add(run)
        session.flush()
        return RfmOutcome(run)

    scoring = score_customers(customers, as_of)
    changed, movements = _store_scores(session, scoring.scores, as_of, run_id)
    _mirror_into_profiles(session, changed, as_of)
    sizes = Counter(score.group for score in scoring.scores.values())
    report["thresholds"] = scoring.thresholds_report()
    report["groups"] = {group: sizes.get(group, 0) for group in RFM_GROUPS}
    report["changed"] = len(changed)
    report["movements"] = movements
    run = RfmRun(id=run_id, status=COMPLETED, as_of=as_of, report=report)
    session.add(run)
    session.flush()

    changed_ids = sorted(changed)
    # Imported on use, so that segment membership may import this module without a cycle.
    from herald.segments.membership import refresh_dependents

    refresh_dependents(session, changed_ids, as_of, rfm=True, profile=True)
    return RfmOutcome(run, changed_ids)


def order_totals(session: Session, as_of: datetime) -> list[CustomerOrders] | None:
    """Per-customer order totals up to `as_of`, in one GROUP BY; None without the order metric."""
    metric_id = session.execute(select(Metric.id).where(Metric.name == ORDER_METRIC)).scalar()
    if metric_id is None:
        return None
    recent_since = as_of - timedelta(days=RECENT_DAYS)
    stmt = (
        select(
            Event.profile_id,
            func.count(),
            func.sum(func.coalesce(Event.value, 0.0)),
            func.min(Event.time),
            func.max(Event.time),
            func.sum(case((Event.time >= recent_since, 1), else_=0)),
        )
        .where(Event.metric_id == metric_id, Event.time <= as_of)
        .group_by(Event.profile_id)
    )
    return [
        CustomerOrders(
            profile_id=pid,
            orders=int(orders),
            revenue=round(float(revenue or 0.0), 2),
            first_at=first_at,
            last_at=last_at,
            recent_orders=int(recent),
        )
        for pid, orders, revenue, first_at, last_at, recent in session.execute(stmt)
    ]


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


@dataclass(frozen=True)
class _Change:
    group: str
    previous_group: str | None


def _store_scores(
    session: Session, scores: dict[str, Score], as_of: datetime, run_id: str
) -> tuple[dict[str, _Change], list[dict[str, Any]]]:
    """Writes new and changed scores; returns the group changes and the movement counts.

    Unchanged rows are not rewritten (their `run_id` stays the run that last changed them), so
    a daily run over a stable customer base writes little.
    """
    table = RfmScore.__table__
    c = table.c
    before = {
        row[0]: row[1:]
        for row in session.execute(
            select(
                c.profile_id,
                c.recency,
                c.frequency,
                c.monetary,
                c.group,
                c.previous_group,
                c.changed_at,
            )
        )
    }
    changed: dict[str, _Change] = {}
    rows = []
    for pid, score in scores.items():
        group = score.group
        values = (score.recency, score.frequency, score.monetary, group)
        old = before.get(pid)
        if old is not None and old[:4] == values:
            continue
        if old is not None and old[3] == group:
            previous, changed_at = old[4], old[5]
        else:
            previous, changed_at = (old[3] if old else None), as_of
            changed[pid] = _Change(group, previous)
        rows.append(
            {
                "profile_id": pid,
                "recency": score.recency,
                "frequency": score.frequency,
                "monetary": score.monetary,
                "group": group,
                "previous_group": previous,
                "changed_at": changed_at,
                "run_id": run_id,
            }
        )
    stmt = upsert(session, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[c.profile_id],
        set_={
            name: stmt.excluded[name]
            for name in (
                "recency",
                "frequency",
                "monetary",
                "group",
                "previous_group",
                "changed_at",
                "run_id",
            )
        },
    )
    for start in range(0, len(rows), WRITE_CHUNK):
        session.execute(stmt, rows[start : start + WRITE_CHUNK])

    moves = Counter((c.previous_group, c.group) for c in changed.values())
    order = {group: i for i, group in enumerate(RFM_GROUPS)}
    movements = [
        {"from": old, "to": new, "count": count}
        for (old, new), count in sorted(
            moves.items(), key=lambda m: (-1 if m[0][0] is None else order[m[0][0]], order[m[0][1]])
        )
    ]
    return changed, movements


def _mirror_into_profiles(session: Session, changed: dict[str, _Change], as_of: datetime) -> None:
    """Sets the rfm_* properties of the profiles whose group changed, from their new scores.

    One set-based UPDATE ... FROM rfm_score per chunk of ids: the JSON is merged in SQL, so a
    property another writer sets meanwhile is kept.
    """
    profile, score = Profile.__table__, RfmScore.__table__
    changed_at = as_of.isoformat()
    if session.get_bind().dialect.name == "postgresql":
        merged = type_coerce(profile.c.properties, JSONB).op("||")(
            func.jsonb_build_object(
                "rfm_group",
                score.c.group,
                "rfm_previous_group",
                score.c.previous_group,
                "rfm_group_changed_at",
                changed_at,
            )
        )
    else:
        merged = func.json_set(
            profile.c.properties,
            "$.rfm_group",
            score.c.group,
            "$.rfm_previous_group",
            score.c.previous_group,
            "$.rfm_group_changed_at",
            changed_at,
        )
    stmt = (
        update(profile)
        .where(
            score.c.profile_id == profile.c.id,
            profile.c.id.in_(bindparam("ids", expanding=True)),
        )
        .values(properties=merged, updated_at=utcnow())
    )
    ids = sorted(changed)
    for start in range(0, len(ids), WRITE_CHUNK):
        session.execute(stmt, {"ids": ids[start : start + WRITE_CHUNK]})
