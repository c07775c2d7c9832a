"""A plain-Python reading of the segment semantics (herald/segments/definition.py), for tests.

Deliberately independent of herald/segments/sql.py: it walks in-memory rows one profile at a time
and follows the module docstring of segment_definition word for word, so that a property test can
hold the SQL compiler to it.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from herald.segments.definition import (
    NEGATIVE_OPERATORS,
    PROFILE_FIELDS,
    AllTime,
    BetweenDates,
    ConsentCondition,
    EventFilter,
    LastDays,
    ListCondition,
    MetricCondition,
    PropertyCondition,
    RfmCondition,
    SegmentDefinition,
)

_DATE_PREFIX = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass
class ProfileRecord:
    id: str
    created_at: datetime
    email: str | None = None
    phone: str | None = None
    external_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    timezone: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class EventRecord:
    profile_id: str
    metric: str
    time: datetime
    value: float | None = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConsentRecord:
    profile_id: str
    channel: str
    status: str


def typed(raw: Any, value_type: str) -> Any:
    """`raw` as a value of `value_type`, or None when it is not set (absent, null, other type)."""
    if value_type == "text":
        return raw if isinstance(raw, str) else None
    if value_type == "number":
        return raw if isinstance(raw, int | float) and not isinstance(raw, bool) else None
    if value_type == "boolean":
        return raw if isinstance(raw, bool) else None
    if value_type == "date":
        # Dates compare as their YYYY-MM-DD text: same order as the dates, also for a prefix
        # such as 2024-13-40 that has the shape of a date without being one.
        return raw[:10] if isinstance(raw, str) and _DATE_PREFIX.match(raw) else None
    if value_type == "list":
        return [e for e in raw if isinstance(e, str)] if isinstance(raw, list) else None
    raise ValueError(f"unknown value type {value_type!r}")


def holds(value: Any, operator: str, arg: Any, today: date) -> bool:
    """`operator` applied to a typed value (None: not set)."""
    if operator == "is_set":
        return value is not None
    if operator == "not_set":
        return value is None
    if value is None:
        return operator in NEGATIVE_OPERATORS
    if operator in ("not_equals", "not_contains", "not_in"):
        return not holds(value, operator.removeprefix("not_"), arg, today)
    if operator in ("equals", "in"):
        return value == arg if operator == "equals" else value in arg
    if operator == "contains":
        return arg in value  # substring of a text, element of a list's strings
    if operator == "starts_with":
        return value.startswith(arg)
    if operator in ("gt", "after"):
        return value > arg
    if operator == "gte":
        return value >= arg
    if operator in ("lt", "before"):
        return value < arg
    if operator == "lte":
        return value <= arg
    if operator == "between":
        return arg[0] <= value <= arg[1]
    if operator == "is_true":
        return value is True
    if operator == "is_false":
        return value is False
    if operator == "within_last_days":
        return (today - timedelta(days=arg)).isoformat() <= value <= today.isoformat()
    if operator == "more_than_days_ago":
        return value < (today - timedelta(days=arg)).isoformat()
    raise ValueError(f"unknown operator {operator!r}")


def property_value(profile: ProfileRecord, name: str, value_type: str) -> Any:
    if name in PROFILE_FIELDS:
        raw = getattr(profile, name)
        if name == "created_at":
            return raw.astimezone(UTC).date().isoformat()
        return typed(raw, value_type)
    return typed(profile.properties.get(name), value_type)


def filter_passes(event: EventRecord, f: EventFilter, today: date) -> bool:
    if f.property == "$value":
        value = event.value
    else:
        value = typed(event.properties.get(f.property), f.value_type)
    return holds(value, f.operator, f.value, today)


def in_timeframe(event: EventRecord, condition: MetricCondition, now: datetime) -> bool:
    frame = condition.timeframe
    if isinstance(frame, LastDays):
        return now - timedelta(days=frame.days) <= event.time
    if isinstance(frame, BetweenDates):
        return frame.start <= event.time.astimezone(UTC).date() <= frame.end
    assert isinstance(frame, AllTime)
    return True


def count_holds(count: int, condition: MetricCondition) -> bool:
    if condition.operator == "at_least":
        return count >= condition.count
    if condition.operator == "exactly":
        return count == condition.count
    return count <= condition.count


@dataclass
class World:
    now: datetime
    events_by_profile: dict[str, list[EventRecord]]
    lists: Mapping[str, set[str]]
    consent: dict[tuple[str, str], str]
    rfm_groups: Mapping[str, str]

    @property
    def today(self) -> date:
        return self.now.astimezone(UTC).date()

    def condition_holds(self, profile: ProfileRecord, condition: Any) -> bool:
        if isinstance(condition, PropertyCondition):
            value = property_value(profile, condition.property, condition.value_type)
            return holds(value, condition.operator, condition.value, self.today)
        if isinstance(condition, MetricCondition):
            count = sum(
                1
                for e in self.events_by_profile.get(profile.id, [])
                if e.metric == condition.metric
                and in_timeframe(e, condition, self.now)
                and all(filter_passes(e, f, self.today) for f in condition.filters)
            )
            return count_holds(count, condition)
        if isinstance(condition, ListCondition):
            member = profile.id in self.lists.get(condition.list_id, set())
            return member == condition.member
        if isinstance(condition, ConsentCondition):
            status = self.consent.get((profile.id, condition.channel.value), "never_subscribed")
            return status == condition.status
        if isinstance(condition, RfmCondition):
            grouped = self.rfm_groups.get(profile.id) in condition.groups
            return grouped == condition.member
        raise NotImplementedError(f"the reference does not evaluate {condition!r}")


def members(
    definition: SegmentDefinition,
    now: datetime,
    profiles: Iterable[ProfileRecord],
    events: Iterable[EventRecord],
    lists: Mapping[str, set[str]],
    consents: Iterable[ConsentRecord],
    rfm_groups: Mapping[str, str],
) -> set[str]:
    """Ids of the profiles that satisfy `definition` at `now`.

    `lists` maps a list id to its members' profile ids; `rfm_groups` maps a profile id to its
    group in the latest RFM run."""
    events_by_profile: dict[str, list[EventRecord]] = {}
    for e in events:
        events_by_profile.setdefault(e.profile_id, []).append(e)
    world = World(
        now=now,
        events_by_profile=events_by_profile,
        lists=lists,
        consent={(c.profile_id, c.channel): c.status for c in consents},
        rfm_groups=rfm_groups,
    )
    return {
        p.id
        for p in profiles
        if all(any(world.condition_holds(p, c) for c in g.any_of) for g in definition.all_of)
    }
