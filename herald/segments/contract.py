"""What the segment workflows and activities exchange (pure)."""

from pydantic import BaseModel


class SegmentRefreshCounts(BaseModel):
    """One refresh of the time-relative segments (workflows/segment_refresh.py)."""

    segments_changed: int = 0
    added: int = 0
    removed: int = 0
