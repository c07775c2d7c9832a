"""Date property flows: profiles enrol on the anniversary of a date (birthday), in their timezone.

The activity runs directly against both databases with a bridge that records the workflow starts
it is asked for (the only fake: the Temporal side); one end-to-end test runs the real hourly
schedule on the Temporal dev server, with a real worker.
"""

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update
from temporalio.client import (
    Client,
    ScheduleOverlapPolicy,
    ScheduleRange,
    WorkflowExecutionStatus,
)
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

import worker
from activities.date_triggers import DateTriggerActivities
from activities.flow_routing import Effects, FlowRoutingHandler, TemporalBridge
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.flows.contract import EnrollmentInput, enrollment_workflow_id
from herald.flows.date_triggers import DateTriggerCounts, is_due, parse_date_value
from herald.flows.graph import DatePropertyTrigger, FlowDefinition
from herald.profiles.consent import set_consent
from models.account import Account
from models.enums import Channel, ConsentStatus
from models.flows import Flow, FlowVersion
from models.profile import Profile
from models.types import utcnow
from tests.test_flow_scenarios import chain, email
from workflows.date_triggers import (
    DATE_TRIGGER_SCHEDULE_ID,
    DATE_TRIGGER_WORKFLOW_ID,
    DateTriggerWorkflow,
    ensure_date_trigger_schedule,
)
from workflows.schedules import SCHEDULED_START_TIME

AMSTERDAM = "Europe/Amsterdam"
NEW_YORK = "America/New_York"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# ---- a database with flows and profiles, and a recording Temporal bridge -------------------------


class RecordingBridge:
    """Stands in for TemporalBridge: checks and records the starts it is asked to make."""

    def __init__(self) -> None:
        self.starts: dict[str, EnrollmentInput] = {}
        self.calls = 0

    def apply(self, effects: Effects) -> None:
        self.calls += 1
        assert effects.signals == [], "date triggers only start enrollments"
        for workflow_id, params in effects.starts:
            assert isinstance(params, EnrollmentInput)
            assert workflow_id == enrollment_workflow_id(
                params.flow_id, params.profile_id, params.entry_key
            )
            assert params.entry_key.startswith("date-")
            assert params.trigger.type == "date_property"
            assert set(params.trigger.properties) == {"property", "value"}
            assert isinstance(params.definition.trigger, DatePropertyTrigger)
            assert params.trigger.properties["property"] == params.definition.trigger.property
            assert workflow_id not in self.starts, "started twice"
            self.starts[workflow_id] = params

    def started(self) -> list[tuple[str, str, str]]:
        """(flow id, profile id, entry key) of every start, sorted."""
        return sorted((p.flow_id, p.profile_id, p.entry_key) for p in self.starts.values())


class DateWorld:
    def __init__(self, db, page_size: int = 1000) -> None:
        self.db = db
        self.bridge = RecordingBridge()
        self.now: datetime | None = None
        self.handler = FlowRoutingHandler(self.bridge, clock=lambda: self.now)
        self.activities = DateTriggerActivities(db.engine, self.handler, page_size=page_size)

    def flow(
        self,
        prop: str = "birthday",
        offset_days: int = 0,
        at: str = "09:00",
        status: str = "live",
        reentry: str = "every_time",
        deleted: bool = False,
        **extra: Any,
    ) -> str:
        definition = FlowDefinition.model_validate(
            chain(
                {
                    "trigger": {
                        "type": "date_property",
                        "property": prop,
                        "offset_days": offset_days,
                        "at_time": at,
                    },
                    "reentry": {"mode": reentry},
                    "steps": [email("greet", "Happy birthday!", smart_sending=False)],
                    **extra,
                }
            )
        )
        return add_flow(self.db, definition, status, deleted)

    def profile(self, timezone: str | None = None, **properties: Any) -> str:
        with session_scope(self.db.engine) as session:
            profile = Profile(
                id=new_id("pr"),
                email=f"{uuid.uuid4().hex[:10]}@example.com",
                timezone=timezone,
                properties=properties,
            )
            session.add(profile)
        return profile.id

    def run(self, at: str | datetime) -> DateTriggerCounts:
        self.now = utc(at) if isinstance(at, str) else at
        return self.activities.enrol_date_triggers(self.now)

    def due(self, at: str) -> set[tuple[str, str]]:
        """(flow, profile) pairs newly enrolled by a run at `at`."""
        before = set(self.bridge.starts)
        self.run(at)
        return {(p.flow_id, p.profile_id) for w, p in self.bridge.starts.items() if w not in before}

    def rows(self) -> list[tuple]:
        return [
            tuple(r)
            for r in self.db.rows(
                "SELECT workflow_id, flow_id, profile_id, entry_key, status, version "
                "FROM flow_enrollment ORDER BY workflow_id"
            )
        ]


def add_flow(db, definition: FlowDefinition, status: str = "live", deleted: bool = False) -> str:
    flow_id = new_id("fl")
    trigger = definition.trigger
    with session_scope(db.engine) as session:
        session.add(
            Flow(
                id=flow_id,
                name=f"{trigger.type} flow",
                status=status,
                trigger_type=trigger.type,
                trigger_key=getattr(trigger, "property", None) or getattr(trigger, "metric", None),
                deleted_at=utcnow() if deleted else None,
            )
        )
        session.flush()
        session.add(
            FlowVersion(flow_id=flow_id, version=1, definition=definition.model_dump(mode="json"))
        )
    return flow_id


@pytest.fixture
def world(db) -> DateWorld:
    return DateWorld(db)


@pytest.fixture
def account_timezone(db):
    """Sets the account timezone for one test and restores it after (the row persists)."""
    original = db.scalar("SELECT timezone FROM account WHERE id = 1")

    def set_to(name: str) -> None:
        with session_scope(db.engine) as session:
            session.execute(update(Account).where(Account.id == 1).values(timezone=name))

    yield set_to
    set_to(original)


# ---- the date arithmetic ------------------------------------------------------------------------


def test_date_values_parse_as_the_calendar_date_written():
    assert parse_date_value("1990-03-05") == date(1990, 3, 5)
    assert parse_date_value(" 1990-03-05 ") == date(1990, 3, 5)
    assert parse_date_value("1990-03-05T23:30:00-05:00") == date(1990, 3, 5)
    assert parse_date_value("1990-03-05T00:00:00Z") == date(1990, 3, 5)
    for bad in ("not a date", "1990-13-45", "", "05/03/1990", 19900305, None, True, {"y": 1}):
        assert parse_date_value(bad) is None, bad


def test_due_checks_the_local_hour_and_the_anniversary_plus_offset():
    trigger = DatePropertyTrigger(property="birthday", offset_days=-3, at_time=time(9, 30))
    zone = ZoneInfo(AMSTERDAM)
    born = date(1990, 1, 2)
    assert is_due(born, trigger, datetime(2023, 12, 30, 9, 0, tzinfo=zone))
    assert is_due(born, trigger, datetime(2023, 12, 30, 9, 59, tzinfo=zone))
    assert not is_due(born, trigger, datetime(2023, 12, 30, 10, 0, tzinfo=zone))
    assert not is_due(born, trigger, datetime(2023, 12, 31, 9, 0, tzinfo=zone))
    # Not before the date itself: the first anniversary is the day (here: minus 3) it names.
    assert not is_due(date(2030, 1, 2), trigger, datetime(2023, 12, 30, 9, 0, tzinfo=zone))
    assert is_due(date(2024, 1, 2), trigger, datetime(2023, 12, 30, 9, 0, tzinfo=zone))


# ---- the activity against the database ------------------------------------------------------


def test_birthdays_are_due_at_the_flow_time_in_each_profiles_own_timezone(world):
    flow = world.flow(at="09:00")
    amsterdam = world.profile(AMSTERDAM, birthday="1990-06-15", first_name="Anna")
    new_york = world.profile(NEW_YORK, birthday="1985-06-15T00:00:00Z")
    tomorrow = world.profile(AMSTERDAM, birthday="1990-06-16")
    world.profile(AMSTERDAM, favourite_colour="green")  # no birthday at all

    assert world.due("2024-06-15T06:00:00") == set(), "08:00 in Amsterdam"
    counts = world.run("2024-06-15T07:00:00")  # 09:00 in Amsterdam (CEST), 03:00 in New York
    assert counts == DateTriggerCounts(flows=1, profiles_checked=3, enrolled=1, unparseable=0)
    assert world.bridge.started() == [(flow, amsterdam, "date-2024-06-15")]
    assert world.due("2024-06-15T07:59:00") == set(), "the same hour again enrols nobody twice"
    assert world.due("2024-06-15T13:00:00") == {(flow, new_york)}, "09:00 in New York (EDT)"
    assert world.due("2024-06-16T07:00:00") == {(flow, tomorrow)}

    params = world.bridge.starts[enrollment_workflow_id(flow, amsterdam, "date-2024-06-15")]
    assert params.trigger.properties == {"property": "birthday", "value": "1990-06-15"}
    assert params.timezone == AMSTERDAM
    assert params.version == 1
    ny_params = world.bridge.starts[enrollment_workflow_id(flow, new_york, "date-2024-06-15")]
    assert ny_params.trigger.properties["value"] == "1985-06-15T00:00:00Z"
    assert ny_params.timezone == NEW_YORK

    # The enrollment rows are real: one per start, running, on the flow's version.
    assert world.rows() == sorted(
        (wid, p.flow_id, p.profile_id, p.entry_key, "running", 1)
        for wid, p in world.bridge.starts.items()
    )
    trigger = world.db.scalar(
        "SELECT trigger FROM flow_enrollment WHERE profile_id = :p", p=amsterdam
    )
    trigger = trigger if isinstance(trigger, dict) else json.loads(trigger)
    assert trigger["type"] == "date_property"
    assert trigger["properties"] == {"property": "birthday", "value": "1990-06-15"}


def test_the_local_date_counts_not_the_utc_date(world):
    flow = world.flow(at="21:00")
    new_york = world.profile(NEW_YORK, birthday="1985-06-15")
    # 21:00 on June 15 in New York is 01:00 on June 16 in UTC.
    assert world.due("2024-06-15T21:00:00") == set()
    assert world.due("2024-06-16T01:00:00") == {(flow, new_york)}
    assert world.bridge.started() == [(flow, new_york, "date-2024-06-15")]


def test_offsets_cross_the_year_boundary(world):
    before = world.flow(offset_days=-3)
    after = world.flow(offset_days=3)
    jan_2 = world.profile(AMSTERDAM, birthday="1990-01-02")
    dec_30 = world.profile(AMSTERDAM, birthday="1990-12-30")

    # 09:00 in Amsterdam in winter (CET) is 08:00 UTC.
    assert world.due("2023-12-29T08:00:00") == set()
    assert world.due("2023-12-30T08:00:00") == {(before, jan_2)}, "3 days before Jan 2, 2024"
    assert world.due("2023-12-31T08:00:00") == set()
    assert world.due("2024-01-02T08:00:00") == {(after, dec_30)}, "3 days after Dec 30, 2023"
    assert world.due("2024-12-30T08:00:00") == {(before, jan_2)}, "and again the next year"
    assert world.due("2025-01-02T08:00:00") == {(after, dec_30)}
    assert sorted(k for _, _, k in world.bridge.started()) == (
        ["date-2023-12-30", "date-2024-01-02", "date-2024-12-30", "date-2025-01-02"]
    )


def test_feb_29_birthdays_fall_on_feb_28_in_common_years(world):
    flow = world.flow()
    leapling = world.profile("UTC", birthday="2000-02-29")
    assert world.due("2023-02-28T09:00:00") == {(flow, leapling)}
    assert world.due("2023-03-01T09:00:00") == set()
    assert world.due("2024-02-28T09:00:00") == set(), "2024 has a Feb 29"
    assert world.due("2024-02-29T09:00:00") == {(flow, leapling)}


def test_unparseable_values_are_skipped_and_counted_and_other_flows_are_ignored(world):
    live = world.flow(prop="birthday")
    manual = world.flow(prop="anniversary", status="manual")
    world.flow(prop="birthday", status="draft")
    world.flow(prop="birthday", deleted=True)
    add_flow(
        world.db,
        FlowDefinition.model_validate(
            chain(
                {
                    "trigger": {"type": "metric", "metric": "birthday"},
                    "steps": [email("x", "x")],
                }
            )
        ),
    )
    good = world.profile("UTC", birthday="1990-06-15", anniversary="2010-06-15")
    for bad in ("not a date", "1990-13-45", "", 19900615, {"day": 15}):
        world.profile("UTC", birthday=bad)
    world.profile("UTC", birthday=None)  # a property set to null: no date, nothing to count
    half = world.profile("UTC", birthday="15 June", anniversary="2010-06-15")

    counts = world.run("2024-06-15T09:00:00")
    assert counts == DateTriggerCounts(flows=2, profiles_checked=7, enrolled=3, unparseable=6)
    assert world.bridge.started() == sorted(
        [
            (live, good, "date-2024-06-15"),
            (manual, good, "date-2024-06-15"),
            (manual, half, "date-2024-06-15"),
        ]
    )
    assert len(world.rows()) == 3


def test_no_timezone_means_the_account_timezone(world, account_timezone):
    account_timezone(NEW_YORK)
    flow = world.flow()
    unknown = world.profile(None, birthday="1990-06-15")
    invalid = world.profile("Mars/Olympus_Mons", birthday="1990-06-15")
    utc_profile = world.profile("UTC", birthday="1990-06-15")
    assert world.due("2024-06-15T09:00:00") == {(flow, utc_profile)}
    assert world.due("2024-06-15T13:00:00") == {(flow, unknown), (flow, invalid)}
    params = world.bridge.starts[enrollment_workflow_id(flow, unknown, "date-2024-06-15")]
    assert params.timezone == NEW_YORK


def test_daylight_saving_gaps_and_repeats(world):
    flow = world.flow(at="02:30")
    spring = world.profile(AMSTERDAM, birthday="1990-03-31")
    autumn = world.profile(AMSTERDAM, birthday="1990-10-27")
    # 2024-03-31: Amsterdam skips 02:00-03:00; the flow's hour is then 03:00 local (01:00 UTC).
    assert world.due("2024-03-31T00:00:00") == set(), "01:00 local"
    assert world.due("2024-03-31T01:00:00") == {(flow, spring)}, "03:00 local, first after gap"
    # 2024-10-27: 02:00-03:00 happens twice (00:00 and 01:00 UTC); the profile enrols once.
    assert world.due("2024-10-27T00:00:00") == {(flow, autumn)}
    assert world.due("2024-10-27T01:00:00") == set()
    assert len(world.rows()) == 2


def test_re_entry_and_flow_filters_apply(world):
    once = world.flow(reentry="once")
    vip_only = world.flow(
        filters=[{"type": "property", "property": "vip", "operator": "equals", "value": True}]
    )
    vip = world.profile("UTC", birthday="1990-06-15", vip=True)
    regular = world.profile("UTC", birthday="1990-06-15", vip=False)
    assert world.due("2024-06-15T09:00:00") == {(once, vip), (once, regular), (vip_only, vip)}
    assert world.due("2025-06-15T09:00:00") == {(vip_only, vip)}, "once ever: not next year"


def test_profiles_are_read_in_pages_and_a_retry_resumes_after_the_last_page(db):
    world = DateWorld(db, page_size=2)
    flow = world.flow()
    due = sorted(world.profile("UTC", birthday=f"19{80 + i}-06-15") for i in range(5))
    counts = world.run("2024-06-15T09:00:00")
    assert counts == DateTriggerCounts(flows=1, profiles_checked=5, enrolled=5, unparseable=0)
    assert world.bridge.calls == 3, "one apply per page of 2"

    # An attempt that heartbeat after the first page resumes there, keeping the counts so far.
    db.clear()
    world = DateWorld(db, page_size=2)
    flow = world.flow()
    due = sorted(world.profile("UTC", birthday=f"19{80 + i}-06-15") for i in range(5))
    world.now = utc("2024-06-15T09:00:00")
    beats: list = []
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        heartbeat_details=[
            {
                "after": due[1],
                "counts": {"flows": 1, "profiles_checked": 2, "enrolled": 2, "unparseable": 0},
            }
        ],
    )
    env.on_heartbeat = lambda *details: beats.append(details)
    counts = env.run(world.activities.enrol_date_triggers, world.now)
    assert counts == DateTriggerCounts(flows=1, profiles_checked=5, enrolled=5, unparseable=0)
    assert world.bridge.started() == [(flow, p, "date-2024-06-15") for p in due[2:]]
    assert [b[0]["after"] for b in beats] == [due[3], due[4]]
    assert beats[-1][0]["counts"]["enrolled"] == 5


def test_nothing_to_do_without_date_flows(world):
    world.profile("UTC", birthday="1990-06-15")
    assert world.run("2024-06-15T09:00:00") == DateTriggerCounts()
    assert world.bridge.calls == 0


# ---- end to end: the real schedule on the Temporal dev server ------------------------------


def _worker(client: Client, settings: Settings, db, monkeypatch) -> Worker:
    """Herald's worker, plus the date trigger pieces if worker.py does not register them yet."""
    # Capture what build_worker would create, without registering a worker we would not run.
    monkeypatch.setattr(worker, "Worker", lambda client, **config: config)
    config = worker.build_worker(client, settings, db.engine)
    monkeypatch.undo()
    if DateTriggerWorkflow not in config["workflows"]:
        bridge = TemporalBridge(
            client, asyncio.get_running_loop(), settings.task_queue, settings.search_attributes
        )
        activities = DateTriggerActivities(db.engine, FlowRoutingHandler(bridge))
        config["workflows"] = [*config["workflows"], DateTriggerWorkflow]
        config["activities"] = [*config["activities"], activities.enrol_date_triggers]
    return Worker(client, **config)


async def _until(condition, within: float = 30.0):
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await condition()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.1)


def _nine_oclock_birthday(at: datetime) -> tuple[str, datetime, date]:
    """A fixed-offset zone where `at` is 09:xx (Etc/GMT-3 is UTC+3), and a birthday due then."""
    offset = 9 - at.hour
    offset = offset + 24 if offset < -12 else offset
    zone = "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"
    local = at.astimezone(ZoneInfo(zone))
    assert local.hour == 9
    born = date(1992 if (local.month, local.day) == (2, 29) else 1990, local.month, local.day)
    return zone, local, born


async def test_the_hourly_schedule_enrols_a_profile_whose_birthday_is_this_hour(
    temporal_server, db, monkeypatch
):
    client = temporal_server.client
    settings = Settings(
        database_url=db.url, task_queue=f"dates-{uuid.uuid4().hex[:8]}", search_attributes=True
    )
    # The schedule fires "now", which may fall in the next hour if the test starts at hh:59:59:
    # set up a profile whose birthday is due this hour and one due the next hour, and expect
    # exactly the one that matches the hour the schedule fired for.
    now = datetime.now(UTC)
    world = DateWorld(db)
    flow = world.flow(at="09:00")
    candidates = {}  # fired UTC hour -> (profile id, local date it is due on)
    for hour_start in (now, now + timedelta(hours=1)):
        zone, local, born = _nine_oclock_birthday(hour_start)
        profile = world.profile(zone, birthday=born.isoformat())
        with session_scope(db.engine) as session:
            row = session.get(Profile, profile)
            set_consent(session, row, Channel.email, ConsentStatus.subscribed, "test")
        candidates[hour_start.hour] = (profile, local.date())
    zone, _, born = _nine_oclock_birthday(now)
    world.profile(zone, birthday=(born + timedelta(days=1)).isoformat())  # tomorrow: not due

    # Its own schedule id: other tests' workers share this server and ensure the default one.
    schedule_id = f"{DATE_TRIGGER_SCHEDULE_ID}-{uuid.uuid4().hex[:8]}"
    schedule = client.get_schedule_handle(schedule_id)
    async with _worker(client, settings, db, monkeypatch):
        try:
            await ensure_date_trigger_schedule(client, settings, schedule_id)
            # Every worker start ensures it again: a no-op.
            await ensure_date_trigger_schedule(client, settings, schedule_id)
            described = await schedule.describe()
            # The server keeps the cron expression as a calendar: minute 0 of every hour.
            [calendar] = described.schedule.spec.calendars
            assert calendar.minute == (ScheduleRange(0),)
            assert calendar.hour == (ScheduleRange(0, 23),)
            assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
            assert described.schedule.action.task_queue == settings.task_queue
            assert described.schedule.action.id == DATE_TRIGGER_WORKFLOW_ID

            await schedule.trigger()

            async def run_started():
                return (await schedule.describe()).info.recent_actions

            [action] = await _until(run_started)
            run_id = action.action.workflow_id
            assert run_id.startswith(DATE_TRIGGER_WORKFLOW_ID)
            run = client.get_workflow_handle_for(DateTriggerWorkflow.run, run_id)
            counts = await asyncio.wait_for(run.result(), 60)
            # The activity checked the time the schedule fired for, not the wall clock.
            fired = (await run.describe()).typed_search_attributes.get(SCHEDULED_START_TIME)
            [checked] = [
                json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
                async for e in run.fetch_history_events()
                if e.HasField("activity_task_scheduled_event_attributes")
            ]
            assert datetime.fromisoformat(checked) == fired
            profile, due_on = candidates[fired.astimezone(UTC).hour]
            enrollment = enrollment_workflow_id(flow, profile, f"date-{due_on.isoformat()}")
            assert counts == DateTriggerCounts(
                flows=1, profiles_checked=3, enrolled=1, unparseable=0
            )

            rows = db.rows("SELECT workflow_id, profile_id FROM flow_enrollment")
            assert [tuple(r) for r in rows] == [(enrollment, profile)]
            handle = client.get_workflow_handle(enrollment)
            assert (await handle.describe()).status in (
                WorkflowExecutionStatus.RUNNING,
                WorkflowExecutionStatus.COMPLETED,
            )
            await asyncio.wait_for(handle.result(), 60)
            assert db.rows(
                "SELECT m.body FROM message_outbox m WHERE m.profile_id = :p", p=profile
            ) == [("Happy birthday!",)]
        finally:
            await schedule.delete()
            for (workflow_id,) in db.rows("SELECT workflow_id FROM flow_enrollment"):
                handle = client.get_workflow_handle(workflow_id)
                if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await handle.terminate("test over")
