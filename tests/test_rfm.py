"""RFM analysis: scores, groups, the eligibility report, score history, the API and the schedule.

Most tests run against a generated shop of 594 customers, 22 in each of the 27 (R, F, M) score
combinations, with 199 days of order history. Each measure's values are separated by tier, so
every customer's expected score is known by construction; a second run a day later moves three
combinations across the recency thresholds (see `second_day`).
"""

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert
from temporalio.client import ScheduleOverlapPolicy, ScheduleRange, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from herald.analytics import rfm_run as rfm_module
from herald.analytics.contract import INVALID_RFM_INPUT
from herald.analytics.rfm_run import run_rfm
from herald.analytics.rfm_scoring import CustomerOrders, rfm_group, score_customers, terciles
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.search_attributes import KIND
from herald.segments import membership as segment_membership
from models.events import Event
from models.profile import Profile
from models.types import utcnow
from worker import build_worker
from workflows.rfm import RFM_SCHEDULE_ID, RFM_WORKFLOW_ID, RfmWorkflow, ensure_rfm_schedule
from workflows.schedules import SCHEDULED_START_TIME

AS_OF = datetime(2025, 6, 1, 3, 0, tzinfo=UTC)
SECOND_DAY = AS_OF + timedelta(days=1)
PER_COMBO = 22

# The table in herald/analytics/rfm_scoring.py, written out for every score: (R, F, M) -> group.
EXPECTED_GROUP = {
    (r, f, m): {
        3: {"high": "Champions", "mid": "Loyal", "low": "Recent"},
        2: {"high": "Loyal", "mid": "Needs Attention", "low": "Needs Attention"},
        1: {"high": "At Risk", "mid": "At Risk", "low": "Inactive"},
    }[r]["high" if f + m >= 5 else "mid" if f + m == 4 else "low"]
    for r, f, m in itertools.product((1, 2, 3), repeat=3)
}
EXPECTED_SIZES = {
    "Champions": 66,
    "Loyal": 132,
    "Recent": 66,
    "Needs Attention": 132,
    "At Risk": 132,
    "Inactive": 66,
}


# ---- a generated shop ---------------------------------------------------------------------------


def combo_of(profile_id: str) -> tuple[int, int, int]:
    r, f, m = profile_id.split("-")[1]
    return int(r), int(f), int(m)


def tiered_shop(as_of: datetime) -> dict[str, list[tuple[datetime, float | None]]]:
    """Orders (time, value) per customer, 22 customers per (R, F, M) combination.

    Recency: R3 1-8 days (the (F3, M3) ones 10), R2 40-60 days (the (F3, M3) ones 70), R1
    120-190 days. Frequency: 1, 2, or 3-5 orders. Monetary: 10-24, 100-142, 300-510 in total.
    Earlier orders are 194-199 days old; some have no value (which counts as 0).
    """
    shop = {}
    for r, f, m in itertools.product((1, 2, 3), repeat=3):
        for k in range(PER_COMBO):
            boundary = (f, m) == (3, 3)
            days = {
                3: 10 if boundary else 1 + k % 8,
                2: 70 if boundary else 40 + k % 21,
                1: 120 + (k * 3 + f * 5 + m) % 71,
            }[r]
            count = {1: 1, 2: 2, 3: 3 + k % 3}[f]
            total = {1: 10 + k % 15, 2: 100 + 2 * k, 3: 300 + 10 * k}[m]
            earlier_value = None if k % 4 == 0 else 1.0
            orders: list[tuple[datetime, float | None]] = [
                (as_of - timedelta(days=199 - j - k % 3), earlier_value) for j in range(count - 1)
            ]
            spent = sum(v or 0.0 for _, v in orders)
            orders.append((as_of - timedelta(days=days, hours=1), float(total - spent)))
            shop[f"c-{r}{f}{m}-{k:02d}"] = orders
    return shop


def seed(db, orders: dict[str, list[tuple[datetime, float | None]]], metric="Placed Order"):
    """Profiles (created if new) and their events, written in bulk."""
    metric_id = db.scalar("SELECT id FROM metric WHERE name = :n", n=metric)
    existing = {pid for (pid,) in db.rows("SELECT id FROM profile")}
    now = utcnow()
    profiles = [
        {
            "id": pid,
            "external_id": pid,
            "push_tokens": [],
            "properties": {"plan": "gold"},
            "created_at": now,
            "updated_at": now,
        }
        for pid in orders
        if pid not in existing
    ]
    events = [
        {
            "profile_id": pid,
            "metric_id": metric_id,
            "time": at,
            "value": value,
            "properties": {},
            "unique_id": f"{metric}-{pid}-{i}-{at.isoformat()}",
            "source": "test",
            "received_at": now,
        }
        for pid, items in orders.items()
        for i, (at, value) in enumerate(items)
    ]
    with db.engine.begin() as conn:
        if profiles:
            conn.execute(insert(Profile.__table__), profiles)
        if events:
            conn.execute(insert(Event.__table__), events)


def seed_shop(db, as_of: datetime = AS_OF) -> None:
    seed(db, tiered_shop(as_of))
    # Not customers: a browser who never ordered, and a first order after both runs' as_of.
    seed(db, {"browser": [(as_of - timedelta(days=3), None)]}, metric="Viewed Product")
    seed(db, {"late": [(as_of + timedelta(days=2), 99.0)]})


def second_day(db) -> None:
    """A day later, the (R1, F3, M3) customers order again: they become the most recent."""
    seed(
        db,
        {f"c-133-{k:02d}": [(SECOND_DAY - timedelta(hours=2), 5.0)] for k in range(PER_COMBO)},
    )


def analyse(db, as_of: datetime = AS_OF):
    with session_scope(db.engine) as session:
        return run_rfm(session, as_of)


def scores(db) -> dict[str, tuple]:
    return {
        row[0]: tuple(row[1:])
        for row in db.rows(
            'SELECT profile_id, recency, frequency, monetary, "group", previous_group, '
            "changed_at, run_id FROM rfm_score"
        )
    }


def profile_state(db) -> dict[str, tuple]:
    """Every profile's properties and updated_at, as the database has them."""
    with session_scope(db.engine) as session:
        return {
            p.id: (p.properties, p.updated_at)
            for p in session.query(Profile).order_by(Profile.id).all()
        }


def as_time(value) -> datetime:
    """A timestamp read with raw SQL: SQLite returns text, PostgreSQL a naive datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


@pytest.fixture
def refreshes(monkeypatch) -> list[tuple]:
    """Records every segment refresh an RFM run asks for (and still performs it)."""
    calls = []
    real = segment_membership.refresh_dependents

    def record(session, profile_ids, now, **kinds):
        calls.append((list(profile_ids) if profile_ids is not None else None, now, kinds))
        return real(session, profile_ids, now, **kinds)

    monkeypatch.setattr(segment_membership, "refresh_dependents", record)
    return calls


# ---- scoring and groups (pure) ------------------------------------------------------------------


def test_every_score_maps_to_the_documented_group_and_all_six_are_reachable():
    for (r, f, m), group in EXPECTED_GROUP.items():
        assert rfm_group(r, f, m) == group, (r, f, m)
    assert set(EXPECTED_GROUP.values()) == set(EXPECTED_SIZES)
    with pytest.raises(ValueError, match="recency score must be 1, 2 or 3"):
        rfm_group(0, 2, 2)


def test_terciles_are_nearest_rank_percentiles():
    assert terciles(list(range(1, 10))) == (3, 6)  # 9 values: the 3rd and 6th
    assert terciles(list(range(1, 11))) == (4, 7)  # 10 values: the 4th and 7th
    assert terciles([5]) == (5, 5)
    t = terciles([1, 1, 1, 1, 1, 1, 2, 3, 4])  # most customers ordered once
    assert (t.p33, t.p67) == (1, 1)
    # Equal values share a band; a value equal to a threshold is in the band below it, so here
    # the middle band is empty.
    assert [t.band(v) for v in (1, 2, 4)] == [1, 3, 3]


def test_small_shop_is_scored_by_hand():
    as_of = AS_OF

    def customer(pid: str, days: int, orders: int, revenue: float) -> CustomerOrders:
        last = as_of - timedelta(days=days, hours=5)
        return CustomerOrders(pid, orders, revenue, last - timedelta(days=30), last, 0)

    shop = [
        customer("a", 1, 9, 900.0),  # most recent, most orders, most spent
        customer("b", 2, 5, 400.0),
        customer("c", 2, 1, 15.0),  # ties b on recency
        customer("d", 30, 3, 120.0),
        customer("e", 45, 2, 80.0),
        customer("f", 60, 4, 600.0),
        customer("g", 200, 6, 650.0),
        customer("h", 300, 1, 20.0),
        customer("i", 400, 1, 10.0),
    ]
    scoring = score_customers(shop, as_of)
    # days sorted 1 2 2 30 45 60 200 300 400; orders 1 1 1 2 3 4 5 6 9;
    # revenue 10 15 20 80 120 400 600 650 900.
    assert scoring.thresholds_report() == {
        "recency_days": {"p33": 2, "p67": 60},
        "frequency": {"p33": 1, "p67": 4},
        "monetary": {"p33": 20.0, "p67": 400.0},
    }
    got = {pid: (s.recency, s.frequency, s.monetary, s.group) for pid, s in scoring.scores.items()}
    assert got == {
        "a": (3, 3, 3, "Champions"),
        "b": (3, 3, 2, "Champions"),
        "c": (3, 1, 1, "Recent"),
        "d": (2, 2, 2, "Needs Attention"),
        "e": (2, 2, 2, "Needs Attention"),
        "f": (2, 2, 3, "Loyal"),
        "g": (1, 3, 3, "At Risk"),
        "h": (1, 1, 1, "Inactive"),
        "i": (1, 1, 1, "Inactive"),
    }


def test_the_generated_shop_covers_every_score_combination_and_group():
    pure = [
        CustomerOrders(
            pid,
            len(items),
            sum(v or 0.0 for _, v in items),
            min(t for t, _ in items),
            max(t for t, _ in items),
            0,
        )
        for pid, items in tiered_shop(AS_OF).items()
    ]
    scoring = score_customers(pure, AS_OF)
    for pid, score in scoring.scores.items():
        assert (score.recency, score.frequency, score.monetary) == combo_of(pid), pid


# ---- eligibility --------------------------------------------------------------------------------


def test_an_ineligible_shop_gets_a_report_naming_every_unmet_requirement_and_nothing_changes(
    db, refreshes
):
    # 100 customers, orders 40-100 days old (history 100 days, none in the last 30), at most 2.
    seed(
        db,
        {
            f"p{i:03d}": [
                (AS_OF - timedelta(days=40 + i % 61), 25.0),
                *([(AS_OF - timedelta(days=100), None)] if i % 2 else []),
            ]
            for i in range(100)
        },
    )
    before = profile_state(db)

    outcome = analyse(db)

    assert outcome.run.status == "ineligible"
    assert outcome.changed_profile_ids == []
    unmet = {item["requirement"]: item for item in outcome.run.report["unmet"]}
    assert {name: (item["required"], item["measured"]) for name, item in unmet.items()} == {
        "customers": (500, 100),
        "order_history_days": (180, 100),
        "recent_orders": (1, 0),
        "repeat_customers": (1, 0),
    }
    assert unmet["customers"]["message"] == (
        "at least 500 customers with orders are needed; found 100"
    )
    assert "the last was 40 days ago" in unmet["recent_orders"]["message"]
    assert outcome.run.report["customers"] == 100
    assert "groups" not in outcome.run.report
    # Stored and listed, and nothing else changed.
    assert db.rows("SELECT id, status FROM rfm_run") == [(outcome.run.id, "ineligible")]
    assert db.scalar("SELECT count(*) FROM rfm_score") == 0
    assert profile_state(db) == before
    assert refreshes == []


def test_without_an_order_metric_every_requirement_is_unmet(db, monkeypatch):
    seed_shop(db)
    monkeypatch.setattr(rfm_module, "ORDER_METRIC", "Placed Order (missing)")
    outcome = analyse(db)
    assert outcome.run.status == "ineligible"
    assert [(u["requirement"], u["measured"]) for u in outcome.run.report["unmet"]] == [
        ("customers", 0),
        ("order_history_days", None),
        ("recent_orders", 0),
        ("repeat_customers", 0),
    ]
    assert db.scalar("SELECT count(*) FROM rfm_score") == 0


def test_only_the_unmet_requirement_is_named(db):
    seed_shop(db)
    # 25 days earlier: the shop's first order is only 174 days old; the rest is still met.
    outcome = analyse(db, AS_OF - timedelta(days=25))
    assert outcome.run.status == "ineligible"
    assert [(u["requirement"], u["measured"]) for u in outcome.run.report["unmet"]] == [
        ("order_history_days", 174)
    ]
    assert [r["met"] for r in outcome.run.report["requirements"]] == [True, False, True, True]
    assert db.scalar("SELECT count(*) FROM rfm_score") == 0


# ---- completed runs -----------------------------------------------------------------------------


def test_a_completed_run_scores_every_customer_and_mirrors_groups_into_profiles(db, refreshes):
    seed_shop(db)
    started = time.perf_counter()
    outcome = analyse(db)
    elapsed = time.perf_counter() - started
    print(f"\nRFM run over 594 customers ({db.backend}): {elapsed:.3f}s")

    run = outcome.run
    assert run.status == "completed"
    assert run.report["customers"] == 594
    assert run.report["groups"] == EXPECTED_SIZES
    assert run.report["thresholds"] == {
        "recency_days": {"p33": 10, "p67": 70},
        "frequency": {"p33": 1, "p67": 2},
        "monetary": {"p33": 24.0, "p67": 142.0},
    }
    # Everyone is new: one movement per group, from no group.
    assert run.report["movements"] == [
        {"from": None, "to": group, "count": size} for group, size in EXPECTED_SIZES.items()
    ]
    assert "changed_profile_ids" not in run.report
    assert sorted(outcome.changed_profile_ids) == sorted(tiered_shop(AS_OF))

    stored = scores(db)
    assert set(stored) == set(tiered_shop(AS_OF))  # not the browser, not the late buyer
    for pid, (r, f, m, group, previous, changed_at, run_id) in stored.items():
        assert (r, f, m) == combo_of(pid), pid
        assert group == EXPECTED_GROUP[combo_of(pid)]
        assert (previous, as_time(changed_at), run_id) == (None, AS_OF, run.id)

    profiles = profile_state(db)
    for pid in stored:
        properties, updated_at = profiles[pid]
        assert properties == {
            "plan": "gold",
            "rfm_group": EXPECTED_GROUP[combo_of(pid)],
            "rfm_previous_group": None,
            "rfm_group_changed_at": AS_OF.isoformat(),
        }
    assert profiles["browser"][0] == {"plan": "gold"}
    assert profiles["late"][0] == {"plan": "gold"}

    [(ids, now, kinds)] = refreshes
    assert (sorted(ids), now, kinds) == (
        sorted(outcome.changed_profile_ids),
        AS_OF,
        {"rfm": True, "profile": True},
    )
    assert elapsed < 5


def test_a_later_run_records_who_moved_and_keeps_the_history_of_who_did_not(db, refreshes):
    seed_shop(db)
    first = analyse(db).run
    before_scores, before_profiles = scores(db), profile_state(db)
    second_day(db)

    outcome = analyse(db, SECOND_DAY)

    run = outcome.run
    # At Risk customers came back; the Champions and Loyal customers at the edge of their
    # recency band slipped (the ranks moved, the thresholds stayed).
    assert run.report["movements"] == [
        {"from": "Champions", "to": "Loyal", "count": 22},
        {"from": "Loyal", "to": "At Risk", "count": 22},
        {"from": "At Risk", "to": "Champions", "count": 22},
    ]
    assert run.report["groups"] == EXPECTED_SIZES
    assert run.report["changed"] == 66
    assert run.report["thresholds"]["recency_days"] == {"p33": 9, "p67": 61}
    moved = {
        "133": ("At Risk", "Champions"),
        "333": ("Champions", "Loyal"),
        "233": ("Loyal", "At Risk"),
    }
    assert sorted(outcome.changed_profile_ids) == sorted(
        pid for pid in before_scores if pid.split("-")[1] in moved
    )

    after_scores, after_profiles = scores(db), profile_state(db)
    for pid, (_, _, _, group, previous, changed_at, run_id) in after_scores.items():
        combo = pid.split("-")[1]
        # Only rows whose scores changed are rewritten (and name the run that changed them).
        assert run_id == (run.id if combo in moved else first.id), pid
        if combo in moved:
            assert (previous, group) == moved[combo], pid
            assert as_time(changed_at) == SECOND_DAY
            properties, updated_at = after_profiles[pid]
            assert properties == {
                "plan": "gold",
                "rfm_group": group,
                "rfm_previous_group": previous,
                "rfm_group_changed_at": SECOND_DAY.isoformat(),
            }
            assert updated_at > before_profiles[pid][1]
        else:
            # Unchanged group: previous group and change time stay from the first run.
            assert (group, previous, as_time(changed_at)) == (
                before_scores[pid][3],
                None,
                AS_OF,
            )
            assert after_profiles[pid] == before_profiles[pid]

    assert [call[0] for call in refreshes][1] == outcome.changed_profile_ids


# ---- the API ------------------------------------------------------------------------------------


def test_report_is_404_until_a_run_completes_and_runs_are_listed_latest_first(api, db, anonymous):
    missing = api.get("/v1/rfm/report")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert missing.json()["message"].startswith("no completed RFM run yet")

    ineligible = api.post("/v1/rfm/runs")
    assert ineligible.status_code == 201, ineligible.text
    body = ineligible.json()
    assert body["status"] == "ineligible"
    assert [u["requirement"] for u in body["report"]["unmet"]] == [
        "customers",
        "order_history_days",
        "recent_orders",
        "repeat_customers",
    ]
    still_missing = api.get("/v1/rfm/report")
    assert still_missing.status_code == 404
    assert f"the latest run ({body['id']}) was ineligible" in still_missing.json()["message"]

    now = utcnow()
    seed_shop(db, as_of=now)
    completed = api.post("/v1/rfm/runs")
    assert completed.status_code == 201, completed.text
    run = completed.json()
    assert run["status"] == "completed"
    assert run["report"]["groups"] == EXPECTED_SIZES
    assert datetime.fromisoformat(run["as_of"]) >= now

    first_page = api.get("/v1/rfm/runs", params={"limit": 1}).json()
    assert [r["id"] for r in first_page["data"]] == [run["id"]]
    second_page = api.get(
        "/v1/rfm/runs", params={"limit": 1, "cursor": first_page["next_cursor"]}
    ).json()
    assert [r["id"] for r in second_page["data"]] == [body["id"]]
    assert second_page["next_cursor"] is None

    report = api.get("/v1/rfm/report")
    assert report.status_code == 200, report.text
    assert report.json() == {
        "run_id": run["id"],
        "as_of": run["as_of"],
        "previous_run_id": None,
        "previous_as_of": None,
        "customers": 594,
        "groups": EXPECTED_SIZES,
        "movements": [
            {"from": None, "to": group, "count": size} for group, size in EXPECTED_SIZES.items()
        ],
        "thresholds": run["report"]["thresholds"],
    }
    assert anonymous.get("/v1/rfm/report").status_code == 401
    assert anonymous.post("/v1/rfm/runs").status_code == 401


def test_report_shows_movements_since_the_previous_completed_run(api, db):
    seed_shop(db)
    first = analyse(db).run
    second_day(db)
    second = analyse(db, SECOND_DAY).run
    report = api.get("/v1/rfm/report").json()
    assert (report["run_id"], report["previous_run_id"]) == (second.id, first.id)
    assert datetime.fromisoformat(report["previous_as_of"]) == AS_OF
    assert {(m["from"], m["to"], m["count"]) for m in report["movements"]} == {
        ("Champions", "Loyal", 22),
        ("Loyal", "At Risk", 22),
        ("At Risk", "Champions", 22),
    }


# ---- Temporal -----------------------------------------------------------------------------------


async def test_the_workflow_runs_the_analysis_once_per_as_of_and_refuses_bad_input(
    skipping_env, db
):
    seed_shop(db)
    settings = Settings(
        database_url=db.url, task_queue=f"rfm-{uuid.uuid4().hex[:8]}", search_attributes=False
    )
    client = skipping_env.client
    async with build_worker(client, settings, db.engine):
        result = await client.execute_workflow(
            RfmWorkflow.run,
            AS_OF.isoformat(),
            id=f"rfm-{uuid.uuid4()}",
            task_queue=settings.task_queue,
        )
        assert result["status"] == "completed"
        assert result["customers"] == 594
        assert result["groups"] == EXPECTED_SIZES
        assert result["unmet"] == []
        # Running the same as_of again (a retry after a lost result) reports the stored run.
        again = await client.execute_workflow(
            RfmWorkflow.run,
            AS_OF.isoformat(),
            id=f"rfm-{uuid.uuid4()}",
            task_queue=settings.task_queue,
        )
        assert again == result

        with pytest.raises(WorkflowFailureError) as failed:
            await client.execute_workflow(
                RfmWorkflow.run,
                "yesterday",
                id=f"rfm-{uuid.uuid4()}",
                task_queue=settings.task_queue,
            )
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == INVALID_RFM_INPUT
        assert "'yesterday'" in cause.message
    assert db.rows("SELECT id, status FROM rfm_run") == [(result["run_id"], "completed")]


async def test_the_daily_schedule_runs_the_analysis_as_of_the_time_it_fired(temporal_server, db):
    client = temporal_server.client
    settings = Settings(
        database_url=db.url, task_queue=f"rfm-{uuid.uuid4().hex[:8]}", search_attributes=True
    )
    # Its own schedule id: other tests' workers share this server and ensure the default one.
    schedule_id = f"{RFM_SCHEDULE_ID}-{uuid.uuid4().hex[:8]}"
    schedule = client.get_schedule_handle(schedule_id)
    async with build_worker(client, settings, db.engine):
        try:
            await ensure_rfm_schedule(client, settings, schedule_id)
            await ensure_rfm_schedule(client, settings, schedule_id)  # every worker start: no-op
            described = await schedule.describe()
            [calendar] = described.schedule.spec.calendars
            assert (calendar.hour, calendar.minute) == ((ScheduleRange(3),), (ScheduleRange(0),))
            assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
            action = described.schedule.action
            assert (action.workflow, action.id, action.task_queue) == (
                "RfmAnalysis",
                RFM_WORKFLOW_ID,
                settings.task_queue,
            )

            await schedule.trigger()
            deadline = time.monotonic() + 30
            while not (actions := (await schedule.describe()).info.recent_actions):
                assert time.monotonic() < deadline, "the schedule did not start a run"
                await asyncio.sleep(0.1)
            [started] = actions
            handle = client.get_workflow_handle(started.action.workflow_id)
            result = await asyncio.wait_for(handle.result(), 60)
            attributes = (await handle.describe()).typed_search_attributes
        finally:
            await schedule.delete()
    # An empty shop: the run is stored as ineligible, as of the time the schedule fired.
    assert result["status"] == "ineligible"
    assert attributes.get(KIND) == "rfm"
    fired = attributes.get(SCHEDULED_START_TIME)
    assert datetime.fromisoformat(result["as_of"]) == fired
    assert db.rows("SELECT id, status FROM rfm_run") == [(result["run_id"], "ineligible")]
