"""Routing handler: keeps materialized segment membership current as events and changes arrive.

For each batch it re-checks, for the batch's profiles only, the segments that what happened can
affect: events re-check segments on their metrics (and journey segments, for engagement
events), list additions segments on those lists, profile changes segments on profile data. It
runs after the engagement handler (journey results must see this batch's opens and clicks) and
before flow routing, so the segment_added rows it writes reach flows in the next batch.
"""

from sqlmodel import Session

from herald.clock import activity_now
from herald.journey_results import engagement_kind
from herald.routing import RoutedItem
from herald.segment_membership import refresh_dependents
from models.enums import OutboxKind


class SegmentRoutingHandler:
    name = "segments"

    def __init__(self, clock=activity_now) -> None:
        self.clock = clock

    def handle(self, session: Session, items: list[RoutedItem]) -> None:
        now = self.clock()
        for organic in (True, False):  # backfilled history moves members silently
            events = [i for i in items if i.kind is OutboxKind.event and i.backfill is not organic]
            if events:
                metrics = {i.metric for i in events if i.metric}
                refresh_dependents(
                    session, [i.profile_id for i in events], now, metrics=metrics, organic=organic
                )
                engaged = [i.profile_id for i in events if i.metric and engagement_kind(i.metric)]
                refresh_dependents(session, engaged, now, journey=True, organic=organic)
        added = [i for i in items if i.kind is OutboxKind.list_added]
        if added:
            lists = {i.list_id for i in added if i.list_id}
            refresh_dependents(session, [i.profile_id for i in added], now, lists=lists)
        changed = [i.profile_id for i in items if i.kind is OutboxKind.profile_changed]
        refresh_dependents(session, changed, now, profile=True)
