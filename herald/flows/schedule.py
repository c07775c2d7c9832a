"""When a time-delay step wakes up (pure; the enrollment workflow calls it with workflow.now()).

"N days, then at HH:MM on allowed weekdays" is wall-clock time in the profile's timezone, so the
arithmetic is done on local dates and converted to UTC per candidate day: a DST change between
now and then moves the UTC instant, not the local time. A wall time that does not exist (the
spring-forward gap) resolves to the same offset as before the change, i.e. one hour later.
"""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from herald.flows.graph import TimeDelay, delay_seconds


def wake_time(now: datetime, step: TimeDelay, timezone: str) -> datetime:
    if step.at_time is None and not step.weekdays:
        return now + timedelta(seconds=delay_seconds(step.amount, step.unit))
    zone = ZoneInfo(timezone)
    local_now = now.astimezone(zone)
    day = local_now.date() + timedelta(days=step.amount)
    at = step.at_time or local_now.time().replace(tzinfo=None)
    for _ in range(8 + step.amount):  # at most a week past the first candidate
        candidate = datetime.combine(day, at, tzinfo=zone).astimezone(UTC)
        if candidate > now and (not step.weekdays or day.weekday() in step.weekdays):
            return candidate
        day += timedelta(days=1)
    raise AssertionError("unreachable: some day within a week is allowed")
