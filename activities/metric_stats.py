"""Routing handler: per-profile running totals of each metric (count, revenue, first/last time).

Counts are increments, so a double-routed event would show as a wrong count: this handler is
also what proves the router's exactly-once claim.
"""

from collections import defaultdict
from datetime import datetime

from sqlalchemy import case
from sqlmodel import Session

from herald.core.sql import upsert
from herald.routing.contract import RoutedItem
from models.enums import OutboxKind
from models.events import ProfileMetricStat


class MetricStatsHandler:
    name = "metric_stats"

    def handle(self, session: Session, items: list[RoutedItem]) -> None:
        totals: dict[tuple[str, int], list] = defaultdict(lambda: [0, 0.0, None, None])
        for item in items:
            if item.kind is not OutboxKind.event or item.metric_id is None:
                continue
            acc = totals[(item.profile_id, item.metric_id)]
            acc[0] += 1
            acc[1] += item.value or 0.0
            acc[2] = _earliest(acc[2], item.time)
            acc[3] = _latest(acc[3], item.time)
        if not totals:
            return
        table = ProfileMetricStat.__table__
        stmt = upsert(session, table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.profile_id, table.c.metric_id],
            set_={
                "count": table.c.count + stmt.excluded.count,
                "total_value": table.c.total_value + stmt.excluded.total_value,
                "first_at": case(
                    (stmt.excluded.first_at < table.c.first_at, stmt.excluded.first_at),
                    else_=table.c.first_at,
                ),
                "last_at": case(
                    (stmt.excluded.last_at > table.c.last_at, stmt.excluded.last_at),
                    else_=table.c.last_at,
                ),
            },
        )
        session.execute(
            stmt,
            [
                {
                    "profile_id": profile_id,
                    "metric_id": metric_id,
                    "count": count,
                    "total_value": value,
                    "first_at": first,
                    "last_at": last,
                }
                for (profile_id, metric_id), (count, value, first, last) in totals.items()
            ],
        )


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None or (b is not None and b < a) else a


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None or (b is not None and b > a) else a
