"""What the analytics workflows and activities exchange (pure)."""

from typing import Any

from temporalio import activity

# The RFM activity raises this error type for input no retry can fix; the workflow lists it as
# non-retryable too.
INVALID_RFM_INPUT = "InvalidRfmInput"


# Workflows call these by method reference (names and result types come from here); the
# implementing class in activities/ subclasses it and decorates its methods with the same names.
class RfmActivitiesContract:
    """activities/rfm.py"""

    @activity.defn(name="run_rfm_analysis")
    def run_rfm_analysis(self, as_of_iso: str | None) -> dict[str, Any]:
        raise NotImplementedError
