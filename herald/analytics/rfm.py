"""RFM analysis: score every customer on recency, frequency and monetary value, and group them.

A customer is a profile with at least one "Placed Order" event at or before `as_of`. For each:

- recency: whole days from the last order to `as_of` (fewer is better);
- frequency: the number of orders;
- monetary: the sum of the orders' `value` (no value counts as 0), rounded to cents.

Each measure scores 1-3 against thresholds specific to this account: its terciles (the 33rd and
67th percentiles, nearest rank: the values at positions ceil(n/3) and ceil(2n/3) of the n sorted
values). The three bands are the value ranges (-inf, p33], (p33, p67] and (p67, +inf), so
customers with equal values always get equal scores, and a value equal to a threshold falls in
the band below it. Frequency and monetary score 1, 2, 3 up those bands; recency is inverted (the
most recent band scores 3). With distinct values each band holds a third of the customers; heavy
ties (most customers have one order) can leave the middle band empty.

Groups come from R and the sum F + M (2-6: high 5-6, mid 4, low 2-3):

| R | F+M high (5-6) | F+M mid (4)     | F+M low (2-3)   |
|---|----------------|-----------------|-----------------|
| 3 | Champions      | Loyal           | Recent          |
| 2 | Loyal          | Needs Attention | Needs Attention |
| 1 | At Risk        | At Risk         | Inactive        |

A run needs enough history to make the percentiles mean something. Every requirement is checked
first; when any is unmet, the run is stored as `ineligible` with a report naming each unmet
requirement and its measured value, and nothing else changes:

- at least 500 customers with orders;
- the first order at least 180 days before `as_of`;
- at least one order in the 30 days before `as_of`;
- at least one customer with 3 or more orders.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import bindparam, case, func, select, text, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session

from herald.core.ids import new_id
from herald.core.sql import upsert
from herald.segments.definition import RFM_GROUPS
from models.events import Event, Metric
from models.profile import Profile
from models.segments import RfmRun, RfmScore
from models.types import utcnow

ORDER_METRIC = "Placed Order"

MIN_CUSTOMERS = 500
MIN_HISTORY_DAYS = 180
RECENT_DAYS = 30
REPEAT_ORDERS = 3

COMPLETED = "completed"
INELIGIBLE = "ineligible"

# Rows per executemany: large enough to amortise round trips, small enough to bound memory.
WRITE_CHUNK = 2000
# Any constant works; it only has to be the same in every process.
_PG_LOCK_KEY = 0x52464D  # "RFM"

_GROUPS_BY_R = {
    3: {"high": "Champions", "mid": "Loyal", "low": "Recent"},
    2: {"high": "Loyal", "mid": "Needs Attention", "low": "Needs Attention"},
    1: {"high": "At Risk", "mid": "At Risk", "low": "Inactive"},
}


# ---- pure scoring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerOrders:
    """One customer's Placed Order totals up to `as_of`."""

    profile_id: str
    orders: int
    revenue: float
    first_at: datetime
    last_at: datetime
    recent_orders: int  # in the RECENT_DAYS before as_of


class Thresholds(NamedTuple):
    """The 33rd and 67th percentiles of one measure."""

    p33: float
    p67: float

    def band(self, value: float) -> int:
        """1, 2 or 3: the band of `value`, lowest values first (a tie goes to the lower band)."""
        if value <= self.p33:
            return 1
        return 2 if value <= self.p67 else 3


@dataclass(frozen=True)
class Score:
    recency: int
    frequency: int
    monetary: int

    @property
    def group(self) -> str:
        return rfm_group(self.recency, self.frequency, self.monetary)


def terciles(values: Sequence[float]) -> Thresholds:
    """Nearest-rank 33rd and 67th percentiles: the values at positions ceil(n/3), ceil(2n/3)."""
    if not values:
        raise ValueError("terciles of no values")
    ordered = sorted(values)
    n = len(ordered)
    return Thresholds(ordered[(n + 2) // 3 - 1], ordered[(2 * n + 2) // 3 - 1])


def rfm_group(recency: int, frequency: int, monetary: int) -> str:
    """The group of a score (see the table in the module docstring)."""
    for name, value in (("recency", recency), ("frequency", frequency), ("monetary", monetary)):
        if value not in (1, 2, 3):
            raise ValueError(f"{name} score must be 1, 2 or 3, not {value!r}")
    fm = frequency + monetary
    level = "high" if fm >= 5 else "mid" if fm == 4 else "low"
    return _GROUPS_BY_R[recency][level]


def recency_days(customer: CustomerOrders, as_of: datetime) -> int:
    return (as_of - customer.last_at).days


@dataclass(frozen=True)
class Scoring:
    scores: dict[str, Score]
    recency_days: Thresholds
    frequency: Thresholds
    monetary: Thresholds

    def thresholds_report(self) -> dict[str, dict[str, float]]:
        return {
            name: {"p33": t.p33, "p67": t.p67}
            for name, t in (
                ("recency_days", self.recency_days),
                ("frequency", self.frequency),
                ("monetary", self.monetary),
            )
        }


def score_customers(customers: list[CustomerOrders], as_of: datetime) -> Scoring:
    """Scores every customer against this population's terciles."""
    days = {c.profile_id: recency_days(c, as_of) for c in customers}
    r = terciles(list(days.values()))
    f = terciles([c.orders for c in customers])
    m = terciles([c.revenue for c in customers])
    scores = {
        c.profile_id: Score(
            recency=4 - r.band(days[c.profile_id]),  # fewer days since the last order: higher
            frequency=f.band(c.orders),
            monetary=m.band(c.revenue),
        )
        for c in customers
    }
    return Scoring(scores, r, f, m)


@dataclass(frozen=True)
class Requirement:
    name: str
    met: bool
    required: int
    measured: int | None
    message: str

    def report(self) -> dict[str, Any]:
        return {
            "requirement": self.name,
            "met": self.met,
            "required": self.required,
            "measured": self.measured,
            "message": self.message,
        }


def eligibility(customers: list[CustomerOrders] | None, as_of: datetime) -> list[Requirement]:
    """Every requirement with its measured value; `customers` None: there is no order metric."""
    customers = customers or []
    first = min((c.first_at for c in customers), default=None)
    history = None if first is None else (as_of - first).days
    last = max((c.last_at for c in customers), default=None)
    recent = sum(c.recent_orders for c in customers)
    repeat = sum(1 for c in customers if c.orders >= REPEAT_ORDERS)
    since_last = "no orders" if last is None else f"the last was {(as_of - last).days} days ago"
    return [
        Requirement(
            "customers",
            len(customers) >= MIN_CUSTOMERS,
            MIN_CUSTOMERS,
            len(customers),
            f"at least {MIN_CUSTOMERS} customers with orders are needed; found {len(customers)}",
        ),
        Requirement(
            "order_history_days",
            history is not None and history >= MIN_HISTORY_DAYS,
            MIN_HISTORY_DAYS,
            history,
            f"the first order must be at least {MIN_HISTORY_DAYS} days old; "
            + ("there are no orders" if history is None else f"it is {history} days old"),
        ),
        Requirement(
            "recent_orders",
            recent >= 1,
            1,
            recent,
            f"at least one order in the last {RECENT_DAYS} days is needed; "
            f"found {recent} ({since_last})",
        ),
        Requirement(
            "repeat_customers",
            repeat >= 1,
            1,
            repeat,
            f"at least one customer with {REPEAT_ORDERS} or more orders is needed; found {repeat}",
        ),
    ]


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
