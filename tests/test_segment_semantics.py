"""The SQL compiler of segment definitions agrees with the documented semantics.

Random small worlds (profiles with properties of mixed JSON types, events, lists, consent, RFM
groups) are stored in the real database; for random valid definitions the members selected by
`members_query` must equal those of the plain-Python reference in tests/segment_reference.py.
A handful of hand-written cases pin the trickiest rules to explicit expected members.
"""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, not_, select

from herald.segments.definition import OPERATORS, PROFILE_FIELDS, RFM_GROUPS, SegmentDefinition
from herald.segments.sql import members_query, segment_clause
from models.enums import Channel, ConsentStatus
from models.events import Event, Metric
from models.lists import ListMembership, ProfileList
from models.profile import Consent, Profile
from models.segments import RfmScore
from tests.conftest import Database
from tests.segment_reference import ConsentRecord, EventRecord, ProfileRecord, members

# 22:30 at UTC-5 is already the next day in UTC: "today" must be the UTC date.
NOW = datetime(2024, 6, 15, 22, 30, tzinfo=timezone(timedelta(hours=-5)))
TODAY = NOW.astimezone(UTC).date()  # 2024-06-16

METRICS = ("Placed Order", "Viewed Product", "Semantics Check")
LIST_IDS = ("list-a", "list-b")
# Each key usually holds one type, so conditions often find a value of their type; any key may
# also hold anything else, or be null or absent. `email` in properties is shadowed by the field.
PROPERTY_KEYS = {
    "plan": "text",
    "a.b": "text",
    "score": "number",
    "x y": "number",
    "vip": "boolean",
    "signup": "date",
    "$odd": "date",
    "tags": "list",
    "email": "text",
}
EVENT_KEYS = {
    "tier": "text",
    "sku": "text",
    "price": "number",
    "$value": "number",
    "flag": "boolean",
}

DAY_OFFSETS = (-61, -60, -59, -31, -30, -29, -8, -7, -6, -3, -2, -1, 0, 1, 2, 30)
DAY_COUNTS = (0, 1, 2, 7, 30, 60)
TEXTS = ("gold", "Gold", "GOLD", "", "go", "old", "silver gold", "gold ", "1", "true", "é")
NUMBERS = (-2, -1.5, 0, 0.1, 0.5, 1, 1.0, 2, 2.5, 3, 10)
EMAILS = ("ann@example.com", "Ann@example.com", "bob@example.org", "", "gold")
PHONES = ("+15550100", "+15550101")
EXTERNAL_IDS = ("ext-1", "EXT-1", "ext-2")
TIMEZONES = ("UTC", "Europe/Paris", "utc")


def day(offset: int) -> date:
    return TODAY + timedelta(days=offset)


DATE_ARGS = tuple(day(o).isoformat() for o in DAY_OFFSETS)
NOT_DATES = ("2024-6-1", " 2024-06-01", "20240601", "2024/06/01", "June 1", "x2024-06-01")
DATE_SUFFIXES = ("", "T00:00:00Z", "T23:59:59+05:00", "T01:00:00-08:00", " 10:00", "Z", "junk")
# Few event texts, so that text filters pass often enough for counts to matter.
EVENT_TEXTS = ("gold", "Gold", "", "gold plus")
FIELD_TEXTS = {
    "tier": EVENT_TEXTS,
    "sku": EVENT_TEXTS,
    "email": EMAILS,
    "phone": PHONES,
    "external_id": EXTERNAL_IDS,
    "timezone": TIMEZONES,
    "first_name": TEXTS,
    "last_name": TEXTS,
}


@dataclass
class World:
    profiles: list[ProfileRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    lists: dict[str, set[str]] = field(default_factory=dict)
    consents: list[ConsentRecord] = field(default_factory=list)
    rfm_groups: dict[str, str] = field(default_factory=dict)

    def expected(self, definition: SegmentDefinition) -> set[str]:
        return members(
            definition,
            NOW,
            self.profiles,
            self.events,
            self.lists,
            self.consents,
            self.rfm_groups,
        )


# ---- the world in the database -----------------------------------------------------------------


@pytest.fixture(scope="module")
def metric_ids(database: Database) -> dict[str, int]:
    """Metrics persist across tests: make sure ours exist once per backend."""
    table = Metric.__table__
    with database.engine.begin() as conn:
        known = dict(conn.execute(select(table.c.name, table.c.id)).all())
        for name in METRICS:
            if name not in known:
                conn.execute(insert(table).values(name=name, builtin=False, created_at=NOW))
        known = dict(conn.execute(select(table.c.name, table.c.id)).all())
    return {name: known[name] for name in METRICS}


def store(database: Database, world: World, metric_ids: dict[str, int]) -> None:
    database.clear()
    profiles = [
        {
            "id": p.id,
            "email": p.email,
            "phone": p.phone,
            "external_id": p.external_id,
            "first_name": p.first_name,
            "last_name": p.last_name,
            "timezone": p.timezone,
            "push_tokens": [],
            "properties": p.properties,
            "created_at": p.created_at,
            "updated_at": NOW,
        }
        for p in world.profiles
    ]
    lists = [{"id": i, "name": i, "created_at": NOW, "updated_at": NOW} for i in world.lists]
    memberships = [
        {"list_id": list_id, "profile_id": pid, "added_at": NOW}
        for list_id, pids in world.lists.items()
        for pid in sorted(pids)
    ]
    events = [
        {
            "profile_id": e.profile_id,
            "metric_id": metric_ids[e.metric],
            "time": e.time,
            "value": e.value,
            "properties": e.properties,
            "unique_id": f"u{i}",
            "received_at": NOW,
        }
        for i, e in enumerate(world.events)
    ]
    consents = [
        {"profile_id": c.profile_id, "channel": c.channel, "status": c.status, "updated_at": NOW}
        for c in world.consents
    ]
    rfm = [
        {
            "profile_id": pid,
            "recency": 1,
            "frequency": 1,
            "monetary": 1,
            "group": group,
            "changed_at": NOW,
            "run_id": "run-1",
        }
        for pid, group in world.rfm_groups.items()
    ]
    with database.engine.begin() as conn:
        for model, rows in (
            (Profile, profiles),
            (ProfileList, lists),
            (ListMembership, memberships),
            (Event, events),
            (Consent, consents),
            (RfmScore, rfm),
        ):
            if rows:
                conn.execute(insert(model.__table__), rows)


def selected(database: Database, definition: SegmentDefinition) -> tuple[set[str], set[str]]:
    """The members per `members_query`, and the profiles for which NOT (the clause) holds.

    Audiences exclude segments with NOT (herald/campaigns/audience.py): the clause must be false,
    never unknown (NULL), for a non-member."""
    profile = Profile.__table__
    outside = select(profile.c.id).where(not_(segment_clause(definition, NOW)))
    with database.engine.connect() as conn:
        inside = set(conn.execute(members_query(definition, NOW)).scalars())
        return inside, set(conn.execute(outside).scalars())


def assert_agrees(database: Database, world: World, definition: SegmentDefinition) -> set[str]:
    expected = world.expected(definition)
    actual, outside = selected(database, definition)
    assert actual == expected, (
        f"{definition.model_dump_json()}\n"
        f"  only in SQL: {sorted(actual - expected)}\n"
        f"  only in reference: {sorted(expected - actual)}"
    )
    unknown = {p.id for p in world.profiles} - expected - outside
    assert not unknown, f"{definition.model_dump_json()}\n  neither in nor out: {sorted(unknown)}"
    return actual


# ---- strategies: worlds ------------------------------------------------------------------------

date_strings = st.builds(
    lambda o, suffix: day(o).isoformat() + suffix,
    st.sampled_from(DAY_OFFSETS),
    st.sampled_from(DATE_SUFFIXES),
) | st.sampled_from(NOT_DATES + ("2024-13-40",))
TYPED = {
    "text": st.sampled_from(TEXTS),
    "number": st.sampled_from(NUMBERS),
    "boolean": st.booleans(),
    "date": date_strings,
}
scalars = st.none() | st.one_of(*TYPED.values())
TYPED["list"] = st.lists(st.sampled_from(TEXTS) | scalars, max_size=4)
json_values = (
    scalars | TYPED["list"] | st.dictionaries(st.sampled_from(("plan", "n")), scalars, max_size=2)
)
ABSENT = object()


@st.composite
def properties(draw, keys: dict[str, str], anything) -> dict[str, Any]:
    """Each key: mostly a value of its usual type, else anything (null included) or absent."""
    out = {}
    for key, value_type in keys.items():
        source = draw(st.sampled_from(("usual", "usual", "usual", "anything", "absent")))
        if source != "absent":
            usual = arguments(value_type, key) if value_type == "text" else TYPED[value_type]
            out[key] = draw(usual if source == "usual" else anything)
    return out


# Instants at the very start or end of a UTC day, mostly on the days that conditions name.
instants = st.builds(
    lambda o, t, tz: datetime.combine(day(o), t, tzinfo=UTC).astimezone(tz),
    st.sampled_from(DAY_OFFSETS) | st.integers(-60, 60),
    st.sampled_from((time(0), time(0, 0, 0, 1), time(3, 30), time(12), time(23, 59, 59, 999999))),
    st.sampled_from((UTC, timezone(timedelta(hours=5)), timezone(timedelta(hours=-8)))),
)
event_times = (
    st.integers(-60 * 86400, 60 * 86400).map(lambda s: NOW + timedelta(seconds=s))
    | st.sampled_from(DAY_COUNTS[1:]).map(lambda n: NOW - timedelta(days=n))
    | st.sampled_from(DAY_COUNTS[1:]).map(lambda n: NOW - timedelta(days=n, microseconds=1))
    | st.just(NOW)
    | instants
)


def unique_or_none(values: list[str | None]) -> list[str | None]:
    seen: set[str] = set()
    out: list[str | None] = []
    for v in values:
        out.append(v if v is not None and v not in seen else None)
        if v is not None:
            seen.add(v)
    return out


@st.composite
def worlds(draw) -> World:
    n = draw(st.integers(5, 15))
    ids = [f"p{i:02d}" for i in range(n)]

    def column(pool) -> list:
        return draw(st.lists(st.none() | st.sampled_from(pool), min_size=n, max_size=n))

    emails, phones = unique_or_none(column(EMAILS)), unique_or_none(column(PHONES))
    external_ids = unique_or_none(column(EXTERNAL_IDS))
    world = World()
    for i, pid in enumerate(ids):
        world.profiles.append(
            ProfileRecord(
                id=pid,
                created_at=draw(instants),
                email=emails[i],
                phone=phones[i],
                external_id=external_ids[i],
                first_name=draw(st.none() | st.sampled_from(TEXTS)),
                last_name=draw(st.none() | st.sampled_from(TEXTS)),
                timezone=draw(st.none() | st.sampled_from(TIMEZONES)),
                properties=draw(properties(PROPERTY_KEYS, json_values)),
            )
        )
        for _ in range(draw(st.integers(0, 10))):
            world.events.append(
                EventRecord(
                    profile_id=pid,
                    # The third metric is rare: one that some profiles never did.
                    metric=draw(st.sampled_from(METRICS[:2] * 3 + METRICS[2:])),
                    time=draw(event_times),
                    value=draw(st.none() | st.sampled_from(NUMBERS)),
                    properties=draw(properties(EVENT_KEYS, scalars | st.sampled_from(EVENT_TEXTS))),
                )
            )
        for channel, status in draw(
            st.dictionaries(st.sampled_from(list(Channel)), st.sampled_from(list(ConsentStatus)))
        ).items():
            world.consents.append(ConsentRecord(pid, channel.value, status.value))
        group = draw(st.none() | st.sampled_from(RFM_GROUPS))
        if group is not None:
            world.rfm_groups[pid] = group
    for list_id in LIST_IDS:
        world.lists[list_id] = set(draw(st.lists(st.sampled_from(ids), max_size=n)))
    return world


# ---- strategies: definitions -------------------------------------------------------------------


def arguments(value_type: str, name: str):
    """Values a condition on `name` compares with, drawn from what the worlds hold."""
    if value_type in ("text", "list"):
        return st.sampled_from(FIELD_TEXTS.get(name, TEXTS))
    if value_type == "number":
        return st.sampled_from(NUMBERS)
    return st.sampled_from(DATE_ARGS)


@st.composite
def operations(draw, name: str, value_type: str) -> dict[str, Any]:
    """An operator valid for `value_type` with a value it accepts."""
    operator = draw(st.sampled_from(OPERATORS[value_type]))
    value: Any = None
    if operator in ("in", "not_in"):
        value = draw(st.lists(arguments(value_type, name), min_size=1, max_size=3))
    elif operator == "between":
        value = sorted(draw(st.lists(arguments(value_type, name), min_size=2, max_size=2)))
    elif operator in ("within_last_days", "more_than_days_ago"):
        value = draw(st.sampled_from(DAY_COUNTS))
    elif operator not in ("is_set", "not_set", "is_true", "is_false"):
        value = draw(arguments(value_type, name))
    return {"value_type": value_type, "operator": operator, "value": value}


def key_for(draw, keys: dict[str, str], value_type: str) -> str:
    """Mostly a key that usually holds `value_type`; sometimes any other key or a missing one."""
    usual = [k for k, t in keys.items() if t == value_type and k not in PROFILE_FIELDS]
    if usual and draw(st.integers(0, 3)):
        return draw(st.sampled_from(usual))
    return draw(st.sampled_from([k for k in keys if k not in PROFILE_FIELDS] + ["missing"]))


@st.composite
def property_conditions(draw, value_type: str) -> dict[str, Any]:
    fields = [f for f, t in PROFILE_FIELDS.items() if t == value_type]
    if fields and draw(st.booleans()):
        name = draw(st.sampled_from(fields))
    else:
        name = key_for(draw, PROPERTY_KEYS, value_type)
    return {"type": "property", "property": name, **draw(operations(name, value_type))}


@st.composite
def event_filters(draw) -> dict[str, Any]:
    value_type = draw(st.sampled_from(("text", "number", "boolean")))
    name = key_for(draw, EVENT_KEYS, value_type)
    if name == "$value":
        value_type = "number"
    return {"property": name, **draw(operations(name, value_type))}


@st.composite
def timeframes(draw) -> dict[str, Any]:
    kind = draw(st.sampled_from(("all_time", "last_days", "between")))
    if kind == "last_days":
        return {"type": kind, "days": draw(st.sampled_from(DAY_COUNTS[1:]))}
    if kind == "between":
        start, end = sorted(draw(st.lists(st.sampled_from(DATE_ARGS), min_size=2, max_size=2)))
        return {"type": kind, "start": start, "end": end}
    return {"type": kind}


metric_conditions = st.fixed_dictionaries(
    {
        "type": st.just("metric"),
        "metric": st.sampled_from(METRICS + ("Never Happened",)),
        "operator": st.sampled_from(("at_least", "exactly", "at_most")),
        "count": st.integers(0, 3),
        "timeframe": timeframes(),
        "filters": st.lists(event_filters(), max_size=2),
    }
)
list_conditions = st.fixed_dictionaries(
    {
        "type": st.just("in_list"),
        "list_id": st.sampled_from(LIST_IDS + ("list-missing",)),
        "member": st.booleans(),
    }
)
consent_conditions = st.fixed_dictionaries(
    {
        "type": st.just("consent"),
        "channel": st.sampled_from([c.value for c in Channel]),
        "status": st.sampled_from([s.value for s in ConsentStatus]),
    }
)
rfm_conditions = st.fixed_dictionaries(
    {
        "type": st.just("rfm_group"),
        "groups": st.lists(st.sampled_from(RFM_GROUPS), min_size=1, max_size=3, unique=True),
        "member": st.booleans(),
    }
)
conditions = st.one_of(
    *(property_conditions(value_type) for value_type in OPERATORS),
    metric_conditions,
    metric_conditions,
    list_conditions,
    consent_conditions,
    rfm_conditions,
)
# Half are a single condition: in a composite, one condition's edge case is often masked by
# the others.
definitions = st.one_of(
    conditions.map(lambda c: [{"any_of": [c]}]),
    st.lists(
        st.lists(conditions, min_size=1, max_size=3).map(lambda cs: {"any_of": cs}),
        min_size=1,
        max_size=3,
    ),
).map(lambda groups: SegmentDefinition.model_validate({"all_of": groups}))


# ---- the property --------------------------------------------------------------------------------


@settings(
    max_examples=60,  # each example checks 10-25 definitions against one world
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(world=worlds(), cases=st.lists(definitions, min_size=10, max_size=25))
def test_sql_members_equal_the_reference_semantics(database, metric_ids, world, cases):
    store(database, world, metric_ids)
    for definition in cases:
        assert_agrees(database, world, definition)


# ---- the trickiest rules, by example -----------------------------------------------------------


def profile(pid: str, **properties: Any) -> ProfileRecord:
    return ProfileRecord(id=pid, created_at=NOW, properties=properties)


def check(db: Database, metric_ids, world: World, condition: dict, expected: set[str]) -> None:
    store(db, world, metric_ids)
    definition = SegmentDefinition.model_validate({"all_of": [{"any_of": [condition]}]})
    assert world.expected(definition) == expected
    assert assert_agrees(db, world, definition) == expected


def test_a_boolean_is_not_a_number_and_a_number_is_not_a_boolean(db, metric_ids):
    world = World(
        profiles=[
            profile("true", n=True),
            profile("one", n=1),
            profile("zero", n=0.0),
            profile("half", n=0.5),
            profile("false", n=False),
            profile("text", n="1"),
            profile("none"),
        ]
    )

    def n(value_type: str, operator: str, value: Any = None) -> dict:
        condition = {"type": "property", "property": "n", "value_type": value_type}
        return {**condition, "operator": operator, "value": value}

    unset = {"true", "false", "text", "none"}
    check(db, metric_ids, world, n("number", "equals", 1), {"one"})
    check(db, metric_ids, world, n("number", "is_set"), {"one", "zero", "half"})
    check(db, metric_ids, world, n("number", "lte", 1), {"one", "zero", "half"})
    check(db, metric_ids, world, n("number", "not_equals", 1), unset | {"zero", "half"})
    # An integer first: the list must not be bound as integers (0.5 would read as 0).
    check(db, metric_ids, world, n("number", "in", [1, 0.5]), {"one", "half"})
    check(db, metric_ids, world, n("number", "not_in", [1, 0.5]), unset | {"zero"})
    check(db, metric_ids, world, n("boolean", "is_true"), {"true"})
    check(db, metric_ids, world, n("boolean", "is_false"), {"false"})
    check(db, metric_ids, world, n("text", "equals", "1"), {"text"})


def test_a_date_is_the_prefix_of_a_string_that_starts_with_one(db, metric_ids):
    world = World(
        profiles=[
            profile("offset", d="2024-06-10T23:30:00-05:00"),  # its own date, not converted
            profile("trailing", d="2024-06-11 and more"),
            profile("impossible", d="2024-13-40"),
            profile("leading space", d=" 2024-06-10"),
            profile("short", d="2024-6-10"),
            profile("compact", d="20240610"),
            profile("number", d=20240610),
        ]
    )

    def prop(operator: str, value: Any = None) -> dict:
        condition = {"type": "property", "property": "d", "value_type": "date"}
        return {**condition, "operator": operator, "value": value}

    dated = {"offset", "trailing", "impossible"}
    check(db, metric_ids, world, prop("is_set"), dated)
    check(db, metric_ids, world, prop("between", ["2024-06-10", "2024-06-10"]), {"offset"})
    check(db, metric_ids, world, prop("after", "2024-06-10"), {"trailing", "impossible"})
    check(db, metric_ids, world, prop("within_last_days", 6), {"offset", "trailing"})
    check(db, metric_ids, world, prop("more_than_days_ago", 5), {"offset"})


def test_created_at_compares_its_utc_date(db, metric_ids):
    late_evening_in_new_york = datetime(2024, 6, 9, 21, 0, tzinfo=timezone(timedelta(hours=-4)))
    world = World(profiles=[ProfileRecord(id="p", created_at=late_evening_in_new_york)])
    created = {"type": "property", "property": "created_at", "value_type": "date"}
    check(db, metric_ids, world, {**created, "operator": "after", "value": "2024-06-09"}, {"p"})
    # today (UTC) is 2024-06-16: 2024-06-10 is exactly 6 days ago.
    check(db, metric_ids, world, {**created, "operator": "within_last_days", "value": 6}, {"p"})
    check(db, metric_ids, world, {**created, "operator": "more_than_days_ago", "value": 6}, set())


def test_not_set_holds_for_missing_null_and_wrong_type_but_not_for_empty_text(db, metric_ids):
    world = World(
        profiles=[
            profile("missing"),
            profile("null", plan=None),
            profile("number", plan=3),
            profile("empty", plan=""),
            profile("gold", plan="gold"),
        ]
    )
    plan = {"type": "property", "property": "plan", "value_type": "text"}
    unset = {"missing", "null", "number"}
    check(db, metric_ids, world, {**plan, "operator": "not_set"}, unset)
    check(db, metric_ids, world, {**plan, "operator": "is_set"}, {"empty", "gold"})
    check(
        db,
        metric_ids,
        world,
        {**plan, "operator": "not_contains", "value": "Gold"},
        unset | {"empty", "gold"},
    )
    check(
        db, metric_ids, world, {**plan, "operator": "not_in", "value": ["gold"]}, unset | {"empty"}
    )
    check(db, metric_ids, world, {**plan, "operator": "contains", "value": ""}, {"empty", "gold"})


def test_a_condition_on_a_value_not_set_is_false_so_its_negation_holds(db, metric_ids):
    # check() also asserts that NOT (clause) selects every non-member (audience exclusions).
    world = World(profiles=[profile("missing"), profile("null", vip=None, plan=None)])
    for value_type, operator, value in (
        ("boolean", "is_true", None),
        ("boolean", "is_false", None),
        ("text", "starts_with", "go"),
        ("text", "starts_with", ""),
        ("date", "within_last_days", 7),
        ("number", "between", [0, 1]),
    ):
        name = {"boolean": "vip", "text": "plan"}.get(value_type, "other")
        condition = {"type": "property", "property": name, "value_type": value_type}
        check(db, metric_ids, world, {**condition, "operator": operator, "value": value}, set())


def test_a_list_compares_only_its_string_elements(db, metric_ids):
    world = World(
        profiles=[
            profile("strings", tags=["vip", "Gold"]),
            profile("mixed", tags=[1, True, None, ["vip"], "1"]),
            profile("empty", tags=[]),
            profile("text", tags="vip"),
        ]
    )
    tags = {"type": "property", "property": "tags", "value_type": "list"}
    check(db, metric_ids, world, {**tags, "operator": "contains", "value": "vip"}, {"strings"})
    check(db, metric_ids, world, {**tags, "operator": "contains", "value": "1"}, {"mixed"})
    check(db, metric_ids, world, {**tags, "operator": "is_set"}, {"strings", "mixed", "empty"})
    check(
        db,
        metric_ids,
        world,
        {**tags, "operator": "not_contains", "value": "gold"},
        {"strings", "mixed", "empty", "text"},
    )


def test_never_subscribed_includes_profiles_without_a_consent_row(db, metric_ids):
    world = World(
        profiles=[
            profile("no row"),
            profile("never"),
            profile("unsub"),
            profile("sub"),
            profile("sms"),
        ],
        consents=[
            ConsentRecord("never", "email", "never_subscribed"),
            ConsentRecord("unsub", "email", "unsubscribed"),
            ConsentRecord("sub", "email", "subscribed"),
            ConsentRecord("sms", "sms", "subscribed"),
        ],
    )
    consent = {"type": "consent", "channel": "email"}
    check(
        db, metric_ids, world, {**consent, "status": "never_subscribed"}, {"no row", "never", "sms"}
    )
    check(db, metric_ids, world, {**consent, "status": "unsubscribed"}, {"unsub"})


def test_at_most_zero_counts_only_qualifying_events(db, metric_ids):
    order = "Placed Order"
    world = World(
        profiles=[profile(p) for p in ("none", "other", "old", "cheap", "buyer", "later")],
        events=[
            EventRecord("other", "Viewed Product", NOW, 50.0),
            EventRecord("old", order, NOW - timedelta(days=7, microseconds=1), 50.0),
            EventRecord("cheap", order, NOW - timedelta(days=1), 5.0),
            EventRecord("buyer", order, NOW - timedelta(days=7), 50.0),
            # Stamped after now: still in the last 7 days (see the semantics).
            EventRecord("later", order, NOW + timedelta(microseconds=1), 50.0),
        ],
    )
    condition = {
        "type": "metric",
        "metric": order,
        "operator": "at_most",
        "count": 0,
        "timeframe": {"type": "last_days", "days": 7},
        "filters": [{"property": "$value", "value_type": "number", "operator": "gte", "value": 10}],
    }
    check(db, metric_ids, world, condition, {"none", "other", "old", "cheap"})


def test_exactly_counts_events_that_pass_every_filter(db, metric_ids):
    order = "Placed Order"

    def placed(pid: str, value: float | None, **properties: Any) -> EventRecord:
        return EventRecord(pid, order, NOW - timedelta(days=1), value, properties)

    world = World(
        profiles=[profile("two"), profile("three"), profile("one")],
        events=[
            placed("two", 20.0, plan="gold"),
            placed("two", 30.0, plan="gold", **{"$value": 1}),
            placed("two", 30.0, plan="Gold"),  # case differs
            placed("two", None, plan="gold"),  # no value: $value not set
            placed("three", 20.0, plan="gold"),
            placed("three", 20.0, plan="gold"),
            placed("three", 20.0, plan="gold"),
            placed("one", 20.0, plan="gold"),
            placed("one", 20.0, plan=True),
        ],
    )
    condition = {
        "type": "metric",
        "metric": order,
        "operator": "exactly",
        "count": 2,
        "timeframe": {"type": "between", "start": day(-1).isoformat(), "end": day(-1).isoformat()},
        "filters": [
            {"property": "plan", "value_type": "text", "operator": "equals", "value": "gold"},
            {
                "property": "$value",
                "value_type": "number",
                "operator": "between",
                "value": [20, 30],
            },
        ],
    }
    check(db, metric_ids, world, condition, {"two"})
    check(db, metric_ids, world, {**condition, "count": 1}, {"one"})
