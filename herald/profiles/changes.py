"""Announcing that profiles changed, so routing re-checks the segments that read them.

Written in the transaction that makes the change (fields, properties, consent, list removals,
new profiles), like every other routing outbox row: a crash can lose neither.
"""

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert
from sqlmodel import Session

from models.enums import OutboxKind
from models.routing import RoutingOutbox
from models.types import utcnow


def announce_profile_changes(
    session: Session, profile_ids: Iterable[str], now: datetime | None = None
) -> None:
    ids = sorted(set(profile_ids))
    if not ids:
        return
    at = now or utcnow()
    kind = OutboxKind.profile_changed.value
    session.execute(
        insert(RoutingOutbox.__table__),
        [{"kind": kind, "profile_id": i, "created_at": at} for i in ids],
    )
