"""Time-delay wake-ups: wall-clock time in the profile's timezone, across DST changes."""

from datetime import UTC, datetime, time

import pytest

from herald.flows.graph import TimeDelay
from herald.flows.schedule import wake_time


def delay(**fields) -> TimeDelay:
    return TimeDelay(id="d", **fields)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "step", "tz", "expected"),
    [
        # Plain durations are exact, whatever the zone does.
        ("2026-03-28T10:00", delay(amount=2, unit="days"), "Europe/Amsterdam", "2026-03-30T10:00"),
        ("2026-11-23T10:00", delay(amount=90, unit="minutes"), "UTC", "2026-11-23T11:30"),
        # 2 days then 09:00 Amsterdam: CET before the change, CEST after (08:00 -> 07:00 UTC).
        (
            "2026-03-28T10:00",
            delay(amount=2, unit="days", at_time=time(9)),
            "Europe/Amsterdam",
            "2026-03-30T07:00",
        ),
        # And back in autumn: 09:00 CET is 08:00 UTC again.
        (
            "2026-10-24T10:00",
            delay(amount=2, unit="days", at_time=time(9)),
            "Europe/Amsterdam",
            "2026-10-26T08:00",
        ),
        # New York changes on a different weekend than Europe.
        (
            "2026-03-07T20:00",
            delay(amount=1, unit="days", at_time=time(9)),
            "America/New_York",
            "2026-03-08T13:00",
        ),
        # 0 days at 09:00 when it is already past 09:00 locally: tomorrow.
        (
            "2026-11-23T12:00",
            delay(amount=0, unit="days", at_time=time(9)),
            "Asia/Tokyo",
            "2026-11-24T00:00",
        ),
        # Only on Mondays (0): from a Wednesday, the next Monday at 09:00 New York.
        (
            "2026-11-25T10:00",
            delay(amount=0, unit="days", at_time=time(9), weekdays=[0]),
            "America/New_York",
            "2026-11-30T14:00",
        ),
        # 1 day then only on weekdays: Friday + 1 = Saturday, so Monday.
        (
            "2026-11-27T08:00",
            delay(amount=1, unit="days", at_time=time(10), weekdays=[0, 1, 2, 3, 4]),
            "UTC",
            "2026-11-30T10:00",
        ),
        # A wall time inside the spring-forward gap (02:30 does not exist) lands an hour later.
        (
            "2026-03-28T12:00",
            delay(amount=1, unit="days", at_time=time(2, 30)),
            "Europe/Amsterdam",
            "2026-03-29T01:30",
        ),
    ],
)
def test_wake_time(now, step, tz, expected):
    assert wake_time(utc(now), step, tz) == utc(expected)
