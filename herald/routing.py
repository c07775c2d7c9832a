"""The routing seam: what the router hands to handlers, and the contract handlers keep.

The router claims a batch of outbox rows (oldest first) and calls every handler, in order, inside
the transaction that marks the rows routed. So:
- a handler's database writes commit exactly once with the claim, or not at all;
- a handler's effects outside the database (starting or signalling workflows) may run again if the
  process dies before the commit, so they must be idempotent by a key derived from the item
  (e.g. a workflow ID built from the event's unique_id);
- items arrive in outbox order, so events of one profile are seen in the order they were accepted.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from models.enums import OutboxKind


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
