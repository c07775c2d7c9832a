"""Date property triggers, the pure part: when a date property's anniversary is due, and the
counts an hourly run reports (the activity is activities/date_triggers.py).
"""

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from temporalio import activity

from herald.flows.graph import DatePropertyTrigger
from herald.flows.property_filters import MISSING, lookup


@dataclass
class DateTriggerCounts:
    flows: int = 0  # date property flows that are live or manual
    profiles_checked: int = 0  # profiles carrying at least one of those flows' properties
    enrolled: int = 0  # enrollments started
    unparseable: int = 0  # (profile, property) values that are not a date


# ---- pure date arithmetic -----------------------------------------------------------------------


def parse_date_value(value: Any) -> date | None:
    """An ISO date ("1990-03-05") or ISO datetime, as the calendar date written; else None.

    A datetime's date is taken as written, not converted to another timezone: a birthday stored
    as "1990-03-05T00:00:00Z" is on March 5 wherever the profile lives.
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        return None


def anniversary(original: date, year: int) -> date:
    """The same month and day in `year`; Feb 29 is Feb 28 in years that have none."""
    try:
        return original.replace(year=year)
    except ValueError:  # Feb 29 in a common year
        return date(year, 2, 28)


def _slot(day: date, at: time, zone: tzinfo | None) -> tuple[date, int]:
    """The local (date, hour) in which `at` on `day` happens: later, if a DST gap skips it."""
    wall = datetime.combine(day, time(at.hour), tzinfo=zone)
    real = wall.astimezone(UTC).astimezone(zone)
    return real.date(), real.hour


def is_due(original: date, trigger: DatePropertyTrigger, local_now: datetime) -> bool:
    """Whether `local_now` (aware, in the profile's timezone) is in the hour this date is due."""
    zone = local_now.tzinfo
    today = (local_now.date(), local_now.hour)
    # An offset of up to a year either way moves the anniversary into a neighbouring year.
    for year in (local_now.year - 1, local_now.year, local_now.year + 1):
        if year < original.year or year < 1 or year > 9998:
            continue
        day = anniversary(original, year).toordinal() + trigger.offset_days
        if not 1 <= day <= date.max.toordinal():
            continue
        if _slot(date.fromordinal(day), trigger.at_time, zone) == today:
            return True
    return False


@functools.lru_cache(maxsize=1024)
def zone_named(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def property_value(properties: dict[str, Any], path: str) -> Any:
    """A key of `properties`, or a dotted path into it (a literal key with dots wins)."""
    value = lookup(properties, path)
    return None if value is MISSING else value


# Workflows call these by method reference (names and result types come from here); the
# implementing class in activities/ subclasses it and decorates its methods with the same names.
class DateTriggerActivitiesContract:
    """activities/date_triggers.py"""

    @activity.defn(name="enrol_date_triggers")
    def enrol_date_triggers(self, now: datetime) -> DateTriggerCounts:
        raise NotImplementedError
