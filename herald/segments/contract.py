"""What the segment workflows and activities exchange (pure)."""

from datetime import datetime

from pydantic import BaseModel
from temporalio import activity


class SegmentRefreshCounts(BaseModel):
    """One refresh of the time-relative segments (workflows/segment_refresh.py)."""

    segments_changed: int = 0
    added: int = 0
    removed: int = 0


# Workflows call these by method reference (names and result types come from here); the
# implementing class in activities/ subclasses it and decorates its methods with the same names.
class SegmentRefreshActivitiesContract:
    """activities/segment_refresh.py"""

    @activity.defn(name="refresh_time_relative_segments")
    def refresh_time_relative_segments(self, at: datetime) -> SegmentRefreshCounts:
        raise NotImplementedError
