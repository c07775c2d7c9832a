"""Routing handler: attributes opens, clicks and bounces to the deliveries they name.

Engagement events ("Opened Email", "Clicked SMS", ...) carry the `$delivery_id` of the message
they are about; herald/analytics/engagement.py records the first of each kind per delivery,
which is what journey results and journey segment conditions read. Inserts are idempotent, so
routing a batch twice changes nothing.
"""

from sqlmodel import Session

from herald.analytics.engagement import record_engagement
from herald.routing.contract import RoutedItem
from models.enums import OutboxKind


class EngagementHandler:
    name = "engagement"

    def handle(self, session: Session, items: list[RoutedItem]) -> None:
        record_engagement(session, [i for i in items if i.kind is OutboxKind.event])
