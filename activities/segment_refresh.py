"""The refresh schedule's activity: recompute segments whose members change with time alone."""

from datetime import datetime

from sqlalchemy.engine import Engine
from temporalio import activity

from herald.core.db import session_scope
from herald.segments.contract import SegmentRefreshActivitiesContract, SegmentRefreshCounts
from herald.segments.membership import refresh_dependents


class SegmentRefreshActivities(SegmentRefreshActivitiesContract):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn(name="refresh_time_relative_segments")
    def refresh_time_relative_segments(self, at: datetime) -> SegmentRefreshCounts:
        """Full recompute, at the time the schedule fired for, of every segment with a "last N
        days" condition or a journey result (deliveries and exits are not routed events).

        One transaction: the members and their segment_added rows commit together or not at all,
        so a retry after a crash recomputes from the same state.
        """
        with session_scope(self.engine) as session:
            changed = refresh_dependents(session, None, at, relative=True, journey=True)
        return SegmentRefreshCounts(
            segments_changed=len(changed),
            added=sum(len(d.added) for d in changed.values()),
            removed=sum(len(d.removed) for d in changed.values()),
        )
