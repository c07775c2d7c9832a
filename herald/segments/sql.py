"""Segment definitions compiled to one set-based SQL condition over `profile`.

`segment_clause` turns a SegmentDefinition (semantics: herald/segments/definition.py) into a WHERE
clause correlated with `profile.id`: event, list, consent, RFM and journey conditions are
EXISTS / count subqueries that walk the index of the profile's rows, so the same clause serves a
full compute (every profile), an incremental one (`profile.id IN (...)`), a conditional split
(one profile) and a campaign audience. JSON values are read through the small elements below,
which compile to each dialect's JSON functions with the type checks the semantics require.
"""

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    Select,
    String,
    and_,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from herald.segments.definition import (
    PROFILE_FIELDS,
    AllTime,
    BetweenDates,
    ConsentCondition,
    EventFilter,
    JourneyCondition,
    LastDays,
    ListCondition,
    MetricCondition,
    PropertyCondition,
    RfmCondition,
    SegmentDefinition,
)
from models.events import Event, Metric
from models.lists import ListMembership
from models.profile import Consent, Profile
from models.segments import RfmScore

profile = Profile.__table__
_event = Event.__table__
_metric_table = Metric.__table__
_list_membership = ListMembership.__table__
_consent_table = Consent.__table__
_rfm = RfmScore.__table__

_DATE_PREFIX_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"
_DATE_PREFIX_REGEX = "^[0-9]{4}-[0-9]{2}-[0-9]{2}"


# ---- JSON values, per dialect ------------------------------------------------------------------
#
# Each element keeps its values as bound parameters listed in `_traverse_internals`, so SQLAlchemy
# caches the compiled statement by its shape: routing re-runs the same few statements per batch
# with other values, and compiling them anew each time cost more than running them.


class JsonValue(ColumnElement):
    """The value under a top-level key of a JSON column when it has the wanted JSON type, else
    NULL: `kind` is text (a string), number (not a boolean), boolean (1 / 0), date (the
    YYYY-MM-DD prefix of a string that starts with one) or array (the raw array)."""

    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("path", InternalTraversal.dp_clauseelement),
        ("key", InternalTraversal.dp_clauseelement),
        ("kind", InternalTraversal.dp_string),
    ]

    def __init__(self, column: ColumnElement, key: str, kind: str):
        self.column, self.kind = column, kind
        self.path = literal(f'$."{key}"')  # SQLite's JSON path
        self.key = literal(key)  # PostgreSQL's -> / ->> operand
        self.type = {"number": Float(), "boolean": Integer()}.get(kind, String())


@compiles(JsonValue, "sqlite")
def _sqlite_json(element: JsonValue, compiler, **kw) -> str:
    col = compiler.process(element.column, **kw)
    path = compiler.process(element.path, **kw)
    typ = f"json_type({col}, {path})"
    raw = f"json_extract({col}, {path})"
    if element.kind == "text":
        return f"(CASE WHEN {typ} = 'text' THEN {raw} END)"
    if element.kind == "number":
        return f"(CASE WHEN {typ} IN ('integer', 'real') THEN {raw} END)"
    if element.kind == "boolean":
        return f"(CASE {typ} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)"
    if element.kind == "date":
        return (
            f"(CASE WHEN {typ} = 'text' AND {raw} GLOB '{_DATE_PREFIX_GLOB}' "
            f"THEN substr({raw}, 1, 10) END)"
        )
    if element.kind == "array":
        return f"(CASE WHEN {typ} = 'array' THEN json_extract({col}, {path}) END)"
    raise ValueError(f"unknown JSON value kind {element.kind!r}")


@compiles(JsonValue, "postgresql")
def _postgres_json(element: JsonValue, compiler, **kw) -> str:
    col = compiler.process(element.column, **kw)
    key = compiler.process(element.key, **kw)
    node = f"({col} -> {key})"
    typ = f"jsonb_typeof({node})"
    text = f"({col} ->> {key})"
    if element.kind == "text":
        return f"(CASE WHEN {typ} = 'string' THEN {text} END)"
    if element.kind == "number":
        return f"(CASE WHEN {typ} = 'number' THEN ({text})::float8 END)"
    if element.kind == "boolean":
        flag = f"(CASE WHEN {text} = 'true' THEN 1 ELSE 0 END)"
        return f"(CASE WHEN {typ} = 'boolean' THEN {flag} END)"
    if element.kind == "date":
        return (
            f"(CASE WHEN {typ} = 'string' AND {text} ~ '{_DATE_PREFIX_REGEX}' "
            f"THEN substr({text}, 1, 10) END)"
        )
    if element.kind == "array":
        return f"(CASE WHEN {typ} = 'array' THEN {node} END)"
    raise ValueError(f"unknown JSON value kind {element.kind!r}")


class _TextTest(ColumnElement):
    """A boolean test of an expression against a text literal, compiled per dialect below."""

    inherit_cache = True
    _traverse_internals = [
        ("subject", InternalTraversal.dp_clauseelement),
        ("text", InternalTraversal.dp_clauseelement),
    ]
    type = Boolean()

    def __init__(self, subject: ColumnElement, text: str):
        self.subject, self.text = subject, literal(text)


class ArrayHasText(_TextTest):
    """A JSON array (a JsonValue of kind array) has a string element equal to the text."""

    inherit_cache = True


@compiles(ArrayHasText, "sqlite")
def _sqlite_array_has(element: ArrayHasText, compiler, **kw) -> str:
    array = compiler.process(element.subject, **kw)
    value = compiler.process(element.text, **kw)
    return (
        f"EXISTS (SELECT 1 FROM json_each({array}) AS e "
        f"WHERE e.type = 'text' AND e.value = {value})"
    )


@compiles(ArrayHasText, "postgresql")
def _postgres_array_has(element: ArrayHasText, compiler, **kw) -> str:
    array = compiler.process(element.subject, **kw)
    value = compiler.process(element.text, **kw)
    return (
        f"EXISTS (SELECT 1 FROM jsonb_array_elements({array}) AS e(v) "
        f"WHERE jsonb_typeof(e.v) = 'string' AND (e.v #>> '{{}}') = {value})"
    )


class TextContains(_TextTest):
    """Case-sensitive substring test (SQLite's LIKE ignores case, so neither dialect uses it)."""

    inherit_cache = True


@compiles(TextContains, "sqlite")
def _sqlite_contains(element: TextContains, compiler, **kw) -> str:
    h = compiler.process(element.subject, **kw)
    return f"(instr({h}, {compiler.process(element.text, **kw)}) > 0)"


@compiles(TextContains, "postgresql")
def _postgres_contains(element: TextContains, compiler, **kw) -> str:
    h = compiler.process(element.subject, **kw)
    return f"(strpos({h}, {compiler.process(element.text, **kw)}) > 0)"


class UtcDate(ColumnElement):
    """A stored UTC timestamp's date as YYYY-MM-DD text."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]
    type = String()

    def __init__(self, column: ColumnElement):
        self.column = column


@compiles(UtcDate, "sqlite")
def _sqlite_date(element: UtcDate, compiler, **kw) -> str:
    return f"substr({compiler.process(element.column, **kw)}, 1, 10)"


@compiles(UtcDate, "postgresql")
def _postgres_date(element: UtcDate, compiler, **kw) -> str:
    return f"to_char({compiler.process(element.column, **kw)}, 'YYYY-MM-DD')"


# ---- typed comparisons -------------------------------------------------------------------------


def _value_of(column: ColumnElement, key: str, value_type: str) -> ColumnElement:
    """The comparable value of a property (NULL when not set): see the semantics."""
    if key in PROFILE_FIELDS and column is profile.c.properties:
        own = profile.c[key]
        return UtcDate(own) if value_type == "date" else own
    kind = {"list": "array"}.get(value_type, value_type)
    return JsonValue(column, key, kind)


def _compare(value: ColumnElement, value_type: str, operator: str, arg: Any, now: datetime):
    """`operator` applied to `value`; negative operators also hold when the value is not set."""
    is_set = value.is_not(None)
    if value_type == "number" and operator in ("in", "not_in"):
        # SQLAlchemy types the whole IN list by its first value: with [2, 0.5], PostgreSQL
        # would cast 0.5 to an integer.
        arg = [float(a) for a in arg]
    if operator == "is_set":
        return is_set
    if operator == "not_set":
        return value.is_(None)
    if value_type == "list":
        has = ArrayHasText(value, arg)
        return and_(is_set, has) if operator == "contains" else or_(value.is_(None), not_(has))
    # Every positive operator is guarded by is_set: a NULL must read as false, not unknown, so
    # that NOT (clause) holds for it too (audiences exclude segments with NOT).
    if operator == "is_true":
        return and_(is_set, value == 1)
    if operator == "is_false":
        return and_(is_set, value == 0)
    if operator == "not_equals":
        return or_(value.is_(None), value != arg)
    if operator == "not_in":
        return or_(value.is_(None), value.not_in(arg))
    if operator == "not_contains":
        return or_(value.is_(None), not_(TextContains(value, arg)))
    if operator == "contains":
        return and_(is_set, TextContains(value, arg))
    if operator == "starts_with":
        return and_(is_set, func.substr(value, 1, len(arg)) == arg) if arg else is_set
    simple = {
        "equals": lambda: value == arg,
        "gt": lambda: value > arg,
        "gte": lambda: value >= arg,
        "lt": lambda: value < arg,
        "lte": lambda: value <= arg,
        "before": lambda: value < arg,
        "after": lambda: value > arg,
        "in": lambda: value.in_(arg),
        "between": lambda: value.between(arg[0], arg[1]),
    }
    if operator in simple:
        return and_(is_set, simple[operator]())
    today = now.astimezone(UTC).date()
    # Guarded by is_set like the operators above: a NULL must read as false, not unknown, so
    # that NOT (clause) holds for it too.
    if operator == "within_last_days":
        since = (today - timedelta(days=arg)).isoformat()
        return and_(is_set, value.between(since, today.isoformat()))
    if operator == "more_than_days_ago":
        return and_(is_set, value < (today - timedelta(days=arg)).isoformat())
    raise ValueError(f"unknown operator {operator!r} for type {value_type!r}")


def _property(condition: PropertyCondition, now: datetime) -> ColumnElement[bool]:
    value = _value_of(profile.c.properties, condition.property, condition.value_type)
    return _compare(value, condition.value_type, condition.operator, condition.value, now)


def _event_filter(f: EventFilter, now: datetime) -> ColumnElement[bool]:
    if f.property == "$value":
        value = _event.c.value
    else:
        value = JsonValue(_event.c.properties, f.property, f.value_type)
    return _compare(value, f.value_type, f.operator, f.value, now)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def metric_events(condition: MetricCondition, now: datetime, profile_id) -> list:
    """The WHERE terms selecting a profile's events that count towards `condition`."""
    metric_id = select(_metric_table.c.id).where(_metric_table.c.name == condition.metric)
    terms = [_event.c.profile_id == profile_id, _event.c.metric_id == metric_id.scalar_subquery()]
    frame = condition.timeframe
    if isinstance(frame, LastDays):
        # No upper bound: an event stamped a little after `now` (client clocks, or a router
        # whose clock is the time its long-poll was scheduled) is still a recent one.
        terms.append(_event.c.time >= now - timedelta(days=frame.days))
    elif isinstance(frame, BetweenDates):
        start, end = _day_start(frame.start), _day_start(frame.end + timedelta(days=1))
        terms += [_event.c.time >= start, _event.c.time < end]
    else:
        assert isinstance(frame, AllTime)
    terms += [_event_filter(f, now) for f in condition.filters]
    return terms


def _metric(condition: MetricCondition, now: datetime) -> ColumnElement[bool]:
    terms = metric_events(condition, now, profile.c.id)

    def done_at_least(n: int) -> ColumnElement[bool]:
        # EXISTS the n-th event: reads at most n index entries of the profile.
        if n == 0:
            return true()
        return select(literal(1)).where(*terms).limit(1).offset(n - 1).exists()

    n = condition.count
    if condition.operator == "at_least":
        return done_at_least(n)
    if condition.operator == "exactly":
        return and_(done_at_least(n), not_(done_at_least(n + 1)))
    return not_(done_at_least(n + 1))


def _in_list(condition: ListCondition) -> ColumnElement[bool]:
    member = (
        select(literal(1))
        .where(
            _list_membership.c.list_id == condition.list_id,
            _list_membership.c.profile_id == profile.c.id,
        )
        .exists()
    )
    return member if condition.member else not_(member)


def _consent(condition: ConsentCondition) -> ColumnElement[bool]:
    def has(*statuses: str) -> ColumnElement[bool]:
        return (
            select(literal(1))
            .where(
                _consent_table.c.profile_id == profile.c.id,
                _consent_table.c.channel == condition.channel.value,
                _consent_table.c.status.in_(statuses),
            )
            .exists()
        )

    if condition.status == "never_subscribed":
        return not_(has("subscribed", "unsubscribed"))
    return has(condition.status)


def _rfm_group(condition: RfmCondition) -> ColumnElement[bool]:
    grouped = (
        select(literal(1))
        .where(_rfm.c.profile_id == profile.c.id, _rfm.c.group.in_(list(condition.groups)))
        .exists()
    )
    return grouped if condition.member else not_(grouped)


def _journey(condition: JourneyCondition) -> ColumnElement[bool]:
    from herald.analytics.journey import journey_clause

    return journey_clause(condition, profile.c.id)


def condition_clause(condition, now: datetime) -> ColumnElement[bool]:
    if isinstance(condition, PropertyCondition):
        return _property(condition, now)
    if isinstance(condition, MetricCondition):
        return _metric(condition, now)
    if isinstance(condition, ListCondition):
        return _in_list(condition)
    if isinstance(condition, ConsentCondition):
        return _consent(condition)
    if isinstance(condition, RfmCondition):
        return _rfm_group(condition)
    if isinstance(condition, JourneyCondition):
        return _journey(condition)
    raise ValueError(f"unknown segment condition {condition!r}")


def segment_clause(definition: SegmentDefinition, now: datetime) -> ColumnElement[bool]:
    """The WHERE clause over `profile` selecting the definition's members at `now`."""
    return and_(
        *(or_(*(condition_clause(c, now) for c in group.any_of)) for group in definition.all_of)
    )


def members_query(definition: SegmentDefinition, now: datetime) -> Select:
    """SELECT profile.id of every member of the definition at `now`."""
    return select(profile.c.id).where(segment_clause(definition, now))
