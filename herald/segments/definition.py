"""Segment definitions: an AND of OR-groups of typed conditions (pure; no database).

`{"all_of": [{"any_of": [condition, ...]}, ...]}`: a profile is a member when, in every group,
at least one condition holds. The SQL compiler (herald/segments/sql.py) and the independent
reference evaluator of the tests implement exactly the semantics below.

Profile property (`type: "property"`)
- `property` names a profile field (email, phone, external_id, first_name, last_name,
  timezone: text; created_at: date) or a top-level key of the profile's `properties`.
- `value_type` says what the value must be: text (a JSON string), number (a JSON number, not a
  boolean), boolean (true/false), date (a string starting with YYYY-MM-DD: that date is compared;
  any time or offset after it is ignored; created_at compares its UTC date) or list (a JSON array;
  its string elements are compared).
- A value that is absent, null or not of `value_type` is "not set": `not_set` and the negative
  operators (not_equals, not_contains, not_in) hold; every other operator fails.
- Text comparisons are case-sensitive. `between` is inclusive at both ends.
- Dates: `before`/`after` compare with a YYYY-MM-DD date; `within_last_days` N holds for dates from
  N days before today up to today (today is the UTC date of the evaluation time);
  `more_than_days_ago` N holds for dates strictly before today minus N days.

Event (`type: "metric"`): the number of the profile's events of `metric` in the timeframe whose
properties pass every filter is compared with `count` (at_least / exactly / at_most; a profile
that never did it has 0). Timeframes: all time; the last N days (at or after now minus N days:
an event stamped later than now counts too); or between two dates (UTC, both days included).
Filters are typed like property conditions (text, number, boolean only); `$value` names the
event's value.

List (`in_list`), consent (`consent`; a channel never set is never_subscribed), RFM group
(`rfm_group`: the group of the latest RFM run; a profile without one is in no group) and journey
results (`journey`: see herald/analytics/journey.py) complete the language.
"""

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from models.enums import Channel

RFM_GROUPS = ("Champions", "Loyal", "Recent", "Needs Attention", "At Risk", "Inactive")
RfmGroup = Literal["Champions", "Loyal", "Recent", "Needs Attention", "At Risk", "Inactive"]

# Profile columns a property condition may name, with their type; anything else is a key of
# `properties`.
PROFILE_FIELDS = {
    "email": "text",
    "phone": "text",
    "external_id": "text",
    "first_name": "text",
    "last_name": "text",
    "timezone": "text",
    "created_at": "date",
}

OPERATORS: dict[str, tuple[str, ...]] = {
    "text": (
        "equals",
        "not_equals",
        "contains",
        "not_contains",
        "starts_with",
        "in",
        "not_in",
        "is_set",
        "not_set",
    ),
    "number": (
        "equals",
        "not_equals",
        "gt",
        "gte",
        "lt",
        "lte",
        "between",
        "in",
        "not_in",
        "is_set",
        "not_set",
    ),
    "boolean": ("is_true", "is_false", "is_set", "not_set"),
    "date": (
        "before",
        "after",
        "between",
        "within_last_days",
        "more_than_days_ago",
        "is_set",
        "not_set",
    ),
    "list": ("contains", "not_contains", "is_set", "not_set"),
}
NEGATIVE_OPERATORS = frozenset({"not_equals", "not_contains", "not_in", "not_set"})

# Property keys end up inside JSON paths: keep them plain.
PROPERTY_KEY = r"^[A-Za-z0-9_$][A-Za-z0-9 _.:$-]{0,199}$"
MAX_CONDITIONS = 20
MAX_LIST_VALUES = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_operator(value_type: str, operator: str) -> str:
    valid = OPERATORS[value_type]
    if operator not in valid:
        raise ValueError(
            f"operator {operator!r} is not valid for type {value_type!r}; use one of: "
            + ", ".join(valid)
        )
    return operator


def _text_value(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _number_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    return value


def _date_value(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError("must be a date (YYYY-MM-DD)") from None


def _check_value(value_type: str, operator: str, value: Any) -> Any:
    """The value an operator needs, checked and normalised; raises ValueError naming the need."""
    if operator in ("is_set", "not_set", "is_true", "is_false"):
        if value is not None:
            raise ValueError(f"operator {operator!r} takes no value")
        return None
    if value is None:
        raise ValueError(f"operator {operator!r} needs a value")
    scalar: Callable[[Any], Any] = {
        "text": _text_value,
        "number": _number_value,
        "date": _date_value,
    }.get(value_type, _text_value)
    if operator in ("in", "not_in"):
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST_VALUES:
            raise ValueError(f"must be a list of 1 to {MAX_LIST_VALUES} values")
        return [scalar(v) for v in value]
    if operator == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("must be a list of two values: [low, high]")
        low, high = scalar(value[0]), scalar(value[1])
        if low > high:
            raise ValueError("the first value of between must not be greater than the second")
        return [low, high]
    if operator in ("within_last_days", "more_than_days_ago"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36500:
            raise ValueError("must be a whole number of days between 0 and 36500")
        return value
    return scalar(value)


class _Comparison(_Strict):
    """A typed comparison: `operator` must suit `value_type`, and `value` the operator."""

    @field_validator("operator", check_fields=False)
    @classmethod
    def _operator(cls, operator: str, info: ValidationInfo) -> str:
        return _check_operator(info.data.get("value_type", "text"), operator)

    @field_validator("value", check_fields=False)
    @classmethod
    def _value(cls, value: Any, info: ValidationInfo) -> Any:
        if "operator" not in info.data:
            return value  # the operator's own error says what is wrong
        return _check_value(info.data.get("value_type", "text"), info.data["operator"], value)


class PropertyCondition(_Comparison):
    type: Literal["property"] = "property"
    property: str = Field(pattern=PROPERTY_KEY)
    value_type: Literal["text", "number", "boolean", "date", "list"] = "text"
    operator: str
    value: Any = None

    @field_validator("value_type")
    @classmethod
    def _field_type(cls, value_type: str, info: ValidationInfo) -> str:
        own = PROFILE_FIELDS.get(info.data.get("property", ""))
        if own is not None and value_type != own:
            raise ValueError(f"profile field {info.data['property']!r} is of type {own!r}")
        return value_type


class EventFilter(_Comparison):
    property: str = Field(pattern=PROPERTY_KEY)
    value_type: Literal["text", "number", "boolean"] = "text"
    operator: str
    value: Any = None

    @field_validator("value_type")
    @classmethod
    def _dollar_value(cls, value_type: str, info: ValidationInfo) -> str:
        if info.data.get("property") == "$value" and value_type != "number":
            raise ValueError("'$value' is the event's value: its type is 'number'")
        return value_type


class AllTime(_Strict):
    type: Literal["all_time"] = "all_time"


class LastDays(_Strict):
    type: Literal["last_days"] = "last_days"
    days: int = Field(ge=1, le=3650)


class BetweenDates(_Strict):
    type: Literal["between"] = "between"
    start: date
    end: date

    @field_validator("end")
    @classmethod
    def _order(cls, end: date, info: ValidationInfo) -> date:
        start = info.data.get("start")
        if start is not None and end < start:
            raise ValueError("end must not be before start")
        return end


Timeframe = Annotated[AllTime | LastDays | BetweenDates, Field(discriminator="type")]


class MetricCondition(_Strict):
    """ "has done <metric> at least / exactly / at most <count> times <timeframe>"."""

    type: Literal["metric"] = "metric"
    metric: str = Field(min_length=1, max_length=200)
    operator: Literal["at_least", "exactly", "at_most"] = "at_least"
    count: int = Field(default=1, ge=0, le=1_000_000)
    timeframe: Timeframe = Field(default_factory=AllTime)
    filters: list[EventFilter] = Field(default_factory=list, max_length=10)

    @property
    def relative(self) -> bool:
        return isinstance(self.timeframe, LastDays)


class ListCondition(_Strict):
    type: Literal["in_list"] = "in_list"
    list_id: str = Field(min_length=1, max_length=40)
    member: bool = True


class ConsentCondition(_Strict):
    type: Literal["consent"] = "consent"
    channel: Channel
    status: Literal["subscribed", "unsubscribed", "never_subscribed"] = "subscribed"


class RfmCondition(_Strict):
    type: Literal["rfm_group"] = "rfm_group"
    groups: list[RfmGroup] = Field(min_length=1, max_length=6)
    member: bool = True  # false: in none of the groups (including no group at all)


JourneyResult = Literal["processed", "opened", "clicked", "bounced", "stopped", "blocked"]


class JourneyCondition(_Strict):
    """The profile has a result in a run: a flow step or a campaign message (see
    herald/analytics/journey.py). `step_id` is required except for `stopped` and `blocked`,
    where leaving it out means anywhere in the run; `reason` narrows stopped and blocked."""

    type: Literal["journey"] = "journey"
    run_kind: Literal["flow", "campaign"]
    run_id: str = Field(min_length=1, max_length=40)
    step_id: str | None = Field(default=None, min_length=1, max_length=100)
    result: JourneyResult
    reason: str | None = Field(default=None, min_length=1, max_length=60)

    @field_validator("reason")
    @classmethod
    def _reason(cls, reason: str | None, info: ValidationInfo) -> str | None:
        if reason is not None and info.data.get("result") not in ("stopped", "blocked"):
            raise ValueError("only stopped and blocked results have a reason")
        return reason

    @model_validator(mode="after")
    def _step(self) -> "JourneyCondition":
        if self.step_id is None and self.result not in ("stopped", "blocked"):
            raise ValueError(f"step_id is required for result {self.result!r}")
        return self


SegmentCondition = Annotated[
    PropertyCondition
    | MetricCondition
    | ListCondition
    | ConsentCondition
    | RfmCondition
    | JourneyCondition,
    Field(discriminator="type"),
]


class AnyOf(_Strict):
    any_of: list[SegmentCondition] = Field(min_length=1, max_length=MAX_CONDITIONS)


class SegmentDefinition(_Strict):
    all_of: list[AnyOf] = Field(min_length=1, max_length=MAX_CONDITIONS)

    def conditions(self) -> list[SegmentCondition]:
        return [c for group in self.all_of for c in group.any_of]


class Dependencies(BaseModel):
    """What can change a definition's members, so routing re-checks only what it must."""

    metrics: set[str] = set()
    lists: set[str] = set()
    profile: bool = False  # properties, fields, consent or lists: re-check on profile_changed
    rfm: bool = False
    journey: bool = False  # re-checked by the refresh schedule and on engagement events
    relative: bool = False  # depends on the clock: re-checked by the refresh schedule


def dependencies(definition: SegmentDefinition) -> Dependencies:
    deps = Dependencies()
    for c in definition.conditions():
        if isinstance(c, MetricCondition):
            deps.metrics.add(c.metric)
            deps.relative = deps.relative or c.relative
        elif isinstance(c, PropertyCondition):
            deps.profile = True
            if c.value_type == "date" and c.operator in ("within_last_days", "more_than_days_ago"):
                deps.relative = True
        elif isinstance(c, ListCondition):
            deps.lists.add(c.list_id)
            deps.profile = True
        elif isinstance(c, ConsentCondition):
            deps.profile = True
        elif isinstance(c, RfmCondition):
            deps.rfm = True
        elif isinstance(c, JourneyCondition):
            deps.journey = True
    return deps


def definition_cost(definition: SegmentDefinition) -> int:
    """What evaluating the definition for one profile costs, in units of one indexed probe.

    A profile, list, consent or RFM condition is one probe; a journey result two. An event
    condition walks the profile's events of its metric, testing every filter on each: 2 plus one
    per filter, twice for `exactly` (two subqueries). Conditions add up, since every one of them
    may be evaluated: 20 groups x 20 event conditions x 10 filters is 20 x 20 x 12 = 4800.
    """
    cost = 0
    for c in definition.conditions():
        if isinstance(c, MetricCondition):
            cost += (2 + len(c.filters)) * (2 if c.operator == "exactly" else 1)
        elif isinstance(c, JourneyCondition):
            cost += 2
        else:
            cost += 1
    return cost
