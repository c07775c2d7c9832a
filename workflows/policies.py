"""The retry policies and timeouts the workflows give their activities, in one place.

Every policy backs off exponentially and never gives up on its own: an error about the moment
(a database or provider outage) is retried until it passes. Errors no retry can fix are raised
non-retryable by the activities themselves (herald/core/activity_errors.py), so they fail at once
whatever the policy says.
"""

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

from herald.analytics.contract import INVALID_RFM_INPUT


def _doubling(first: timedelta, longest: timedelta, **options: Any) -> RetryPolicy:
    """Retries after `first`, doubling the wait up to `longest`, with no limit on attempts."""
    return RetryPolicy(
        initial_interval=first, backoff_coefficient=2.0, maximum_interval=longest, **options
    )


# The router's long-polling activity: back soon after a hiccup, routing is everyone's latency.
ROUTER_RETRY = _doubling(timedelta(seconds=1), timedelta(seconds=30))
# Sending must not give up on a provider or database outage; skips are results, not errors.
DELIVER_RETRY = _doubling(timedelta(seconds=1), timedelta(minutes=5))
# Campaign planning, pages and bookkeeping.
CAMPAIGN_RETRY = _doubling(timedelta(seconds=1), timedelta(minutes=2))
# Hourly jobs (date triggers, time-relative segments): the next run comes anyway.
SCHEDULED_JOB_RETRY = _doubling(timedelta(seconds=5), timedelta(minutes=2))
RFM_RETRY = _doubling(
    timedelta(seconds=10), timedelta(minutes=5), non_retryable_error_types=[INVALID_RFM_INPUT]
)
# Webhook and internal-alert steps: retried for up to a day, then the step is skipped.
WEBHOOK_RETRY = _doubling(timedelta(seconds=10), timedelta(hours=1))
WEBHOOK_SCHEDULE_TO_CLOSE = timedelta(hours=24)
# One attempt: must exceed webhook_timeout_seconds.
WEBHOOK_START_TO_CLOSE = timedelta(minutes=1)
