"""The current time as Herald's activities should see it."""

from datetime import UTC, datetime

from temporalio import activity

from models.types import utcnow


def activity_now() -> datetime:
    """Inside an activity: when this attempt was scheduled, by the Temporal server's clock.

    That is the wall clock in production (milliseconds before the attempt runs) and the
    simulated clock under the time-skipping test server, so policies measured in hours and days
    (smart sending, caps, quiet hours) follow the same time as the workflow's timers.
    Outside an activity (direct calls, the API): the wall clock.
    """
    try:
        scheduled = activity.info().current_attempt_scheduled_time
    except RuntimeError:
        return utcnow()
    return scheduled.astimezone(UTC)
