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

The run that reads orders and stores scores is herald/analytics/rfm_run.py.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

MIN_CUSTOMERS = 500
MIN_HISTORY_DAYS = 180
RECENT_DAYS = 30
REPEAT_ORDERS = 3

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
