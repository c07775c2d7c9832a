"""Engagement attribution: opens, clicks and bounces counted for the delivery they are about.

An engagement event ("Opened Email", "Clicked SMS", "Bounced Email", ...) names its delivery in
`$delivery_id`; the router hands every batch here, and each (delivery, kind) keeps its earliest
event in `delivery_engagement`, which journey results (journey_report.py) count.
"""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from herald.core.sql import upsert
from herald.routing.contract import RoutedItem
from models.delivery import Delivery
from models.enums import Channel, OutboxKind
from models.profile import Profile
from models.segments import DeliveryEngagement
from models.types import utcnow

_delivery = Delivery.__table__
_engagement = DeliveryEngagement.__table__
_profile = Profile.__table__

_VERBS = {"Opened": "opened", "Clicked": "clicked", "Bounced": "bounced"}
_CHANNELS = frozenset(c.value for c in Channel)


def engagement_kind(metric_name: str | None) -> str | None:
    """`opened`, `clicked` or `bounced` for "Opened Email", "Clicked SMS", "Bounced Email", ...
    (a verb and a channel name); None for any other metric."""
    verb, _, channel = (metric_name or "").partition(" ")
    return _VERBS.get(verb) if channel.lower() in _CHANNELS else None


def record_engagement(session: Session, items: Iterable[RoutedItem]) -> set[str]:
    """Attributes engagement events to the deliveries their `$delivery_id` names.

    An event counts only for a sent delivery of its own profile, not a test send; a
    `$delivery_id` that names no delivery, or another profile's, is ignored. Each (delivery,
    kind) keeps its earliest event, so routing an event twice, or a later open, changes nothing.
    Three set-based statements per batch. Returns the profiles whose journey results changed.
    """
    claims = [
        (item, kind, delivery_id)
        for item in items
        if item.kind is OutboxKind.event
        and (kind := engagement_kind(item.metric)) is not None
        and (delivery_id := _delivery_id(item.properties)) is not None
    ]
    if not claims:
        return set()
    deliveries = {
        row.id: row
        for row in session.execute(
            select(
                _delivery.c.id,
                _delivery.c.profile_id,
                _delivery.c.run_kind,
                _delivery.c.run_id,
                _delivery.c.step_id,
            )
            # The join skips deliveries whose profile is gone (engagement references profile).
            .join(_profile, _profile.c.id == _delivery.c.profile_id)
            .where(
                _delivery.c.id.in_({d for _, _, d in claims}),
                _delivery.c.status == "sent",
                _delivery.c.test.is_(False),  # opening a test send is the operator's doing
            )
        )
    }
    earliest: dict[tuple[str, str], dict[str, Any]] = {}
    for item, kind, delivery_id in claims:
        delivery = deliveries.get(delivery_id)
        if delivery is None or delivery.profile_id != item.profile_id:
            continue
        row = {
            "delivery_id": delivery_id,
            "kind": kind,
            "run_kind": delivery.run_kind,
            "run_id": delivery.run_id,
            "step_id": delivery.step_id,
            "profile_id": delivery.profile_id,
            "event_id": item.event_id,
            "at": item.time or utcnow(),
        }
        seen = earliest.get((delivery_id, kind))
        if seen is None or row["at"] < seen["at"]:
            earliest[(delivery_id, kind)] = row
    if not earliest:
        return set()
    recorded = {
        (r.delivery_id, r.kind): r.at
        for r in session.execute(
            select(_engagement.c.delivery_id, _engagement.c.kind, _engagement.c.at).where(
                _engagement.c.delivery_id.in_({d for d, _ in earliest})
            )
        )
    }
    rows = [
        row for key, row in earliest.items() if key not in recorded or row["at"] < recorded[key]
    ]
    if not rows:
        return set()
    # Insert, or move a recorded engagement earlier (an older event routed late, e.g. backfill).
    stmt = upsert(session, _engagement)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_engagement.c.delivery_id, _engagement.c.kind],
        set_={"event_id": stmt.excluded.event_id, "at": stmt.excluded.at},
        where=stmt.excluded.at < _engagement.c.at,
    )
    session.execute(stmt, rows)
    return {row["profile_id"] for row in rows}


def _delivery_id(properties: dict[str, Any] | None) -> str | None:
    value = (properties or {}).get("$delivery_id")
    max_length = _delivery.c.id.type.length
    return value if isinstance(value, str) and 0 < len(value) <= max_length else None
