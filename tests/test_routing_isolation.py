"""One segment or one outbox row never holds routing hostage (issue item 3).

An expensive segment is refused at validation and cut short by a statement budget; a segment
that fails is deferred and counted while the rest of the batch commits; an item that fails on
its own is parked in a dead-letter table that operators list and retry; drafts are not re-checked.
"""

import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from activities.metric_stats import MetricStatsHandler
from activities.routing import RouterActivities
from activities.segment_routing import SegmentRoutingHandler
from herald.core.db import session_scope, statement_budget
from herald.ingest.events import MetricDirectory
from herald.ingest.events import ingest as store_events
from herald.routing.contract import RoutedItem
from herald.segments.store import create_segment, set_status
from models.enums import OutboxKind
from models.events import Event, EventIn
from models.lists import ProfileList
from models.segments import Segment

NOPE = {"property": "sku", "operator": "equals", "value": "nope"}


def heavy_definition(metric: str = "Viewed Product") -> dict:
    """The production case: 20 groups x 20 metric conditions x 10 filters that never match, so
    every condition scans all of the profile's events (the last of each group holds)."""
    miss = {"type": "metric", "metric": metric, "filters": [NOPE] * 10}
    holds = {**miss, "operator": "at_most", "count": 0}
    return {"all_of": [{"any_of": [miss] * 19 + [holds]}] * 20}


def one(condition: dict) -> dict:
    return {"all_of": [{"any_of": [condition]}]}


VIEWED = one({"type": "metric", "metric": "Viewed Product"})


def event(email: str, metric: str, uid: str, value: float | None = None) -> EventIn:
    return EventIn.model_validate(
        {"metric": metric, "profile": {"email": email}, "unique_id": uid, "value": value}
    )


def route(db, handlers, **options) -> RouterActivities:
    router = RouterActivities(db.engine, handlers, **options)
    while router.route_once():
        pass  # one batch per call: route until the outbox is empty
    return router


def members(db, segment_id: str) -> set[str]:
    rows = db.rows("SELECT profile_id FROM segment_membership WHERE segment_id = :s", s=segment_id)
    return {r[0] for r in rows}


def live_segment(db, definition: dict, name: str = "S") -> str:
    with session_scope(db.engine) as session:
        segment = create_segment(session, name=name, definition=definition, now=datetime.now(UTC))
        set_status(session, segment, "live", datetime.now(UTC))
        return segment.id


def stored_segment(db, segment_id: str, definition: dict, status: str = "live") -> None:
    """A segment saved before today's validation existed (or corrupted since): no checks."""
    now = datetime.now(UTC)
    with session_scope(db.engine) as session:
        session.add(
            Segment(
                id=segment_id,
                name=segment_id,
                status=status,
                definition=definition,
                created_at=now,
                updated_at=now,
            )
        )


def failures_metric(segment_id: str) -> float:
    value = REGISTRY.get_sample_value(
        "herald_routing_segment_failures_total", {"segment_id": segment_id}
    )
    return value or 0.0


# ---- the cost budget at validation -----------------------------------------------------------


def test_a_definition_over_the_cost_budget_is_422_naming_cost_and_budget(api, db):
    response = api.post("/v1/segments", json={"name": "Huge", "definition": heavy_definition()})
    assert response.status_code == 422, response.text
    found = {e["field"]: e["reason"] for e in response.json()["errors"]}
    assert "definition" in found
    assert "costs 4800" in found["definition"] and "budget of 500" in found["definition"]
    preview = api.post("/v1/segments/preview", json={"definition": heavy_definition()})
    assert preview.status_code == 422
    assert db.scalar("SELECT count(*) FROM segment") == 0


# ---- the statement budget ----------------------------------------------------------------------

# Counts to 10^8 one row at a time: tens of seconds on either backend unless it is cut short.
_ENDLESS = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) "
    "SELECT count(*) FROM c"
)


def test_a_statement_over_its_budget_is_cancelled_and_the_transaction_goes_on(db):
    with session_scope(db.engine) as session, statement_budget(session, 0.05):
        session.add(ProfileList(id="lst_a", name="A"))
        session.flush()
        with pytest.raises(OperationalError), session.begin_nested():
            session.execute(text(_ENDLESS))
        assert session.execute(text("SELECT count(*) FROM profile_list")).scalar() == 1
    assert db.scalar("SELECT name FROM profile_list WHERE id = 'lst_a'") == "A"
    # The budget ends with its block: the pooled connection runs long statements again.
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM profile_list")).scalar() == 1


# ---- drafts ------------------------------------------------------------------------------------


def test_routing_does_not_recheck_draft_segments_and_going_live_catches_up(db):
    metrics = MetricDirectory()
    store_events(db.engine, metrics, [event("seed@x.co", "Viewed Product", "seed")], "test")
    route(db, [SegmentRoutingHandler()])
    with session_scope(db.engine) as session:
        draft = create_segment(session, name="D", definition=VIEWED, now=datetime.now(UTC)).id
    live = live_segment(db, VIEWED)
    store_events(db.engine, metrics, [event("ann@x.co", "Viewed Product", "v1")], "test")
    route(db, [SegmentRoutingHandler()])
    ann = db.scalar("SELECT id FROM profile WHERE email = 'ann@x.co'")

    assert ann in members(db, live)
    assert ann not in members(db, draft)
    with session_scope(db.engine) as session:
        set_status(session, session.get(Segment, draft), "live", datetime.now(UTC))
    assert ann in members(db, draft)
    # Catching up is not an organic entry: no "added to segment" flow starts from it.
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE segment_id = :s", s=draft) == 0


# ---- a failing segment is isolated -------------------------------------------------------------


def test_an_expensive_live_segment_is_deferred_and_the_rest_of_the_batch_commits(api, db):
    metrics = MetricDirectory()
    store_events(db.engine, metrics, [event("ann@x.co", "Viewed Product", "v0")], "test")
    route(db, [SegmentRoutingHandler()])
    ann = db.scalar("SELECT id FROM profile WHERE email = 'ann@x.co'")
    metric_id = db.scalar("SELECT id FROM metric WHERE name = 'Viewed Product'")
    start = datetime.now(UTC) - timedelta(days=1)
    with db.engine.begin() as conn:  # history: 10 000 views, none of them of sku "nope"
        conn.execute(
            insert(Event.__table__),
            [
                {
                    "profile_id": ann,
                    "metric_id": metric_id,
                    "time": start + timedelta(seconds=i),
                    "properties": {"sku": "a"},
                    "unique_id": f"h{i}",
                    "source": "test",
                    "received_at": start,
                }
                for i in range(10_000)
            ],
        )
    stored_segment(db, "seg_heavy", heavy_definition())
    cheap = live_segment(db, VIEWED, "Viewers")
    before = failures_metric("seg_heavy")

    store_events(
        db.engine,
        metrics,
        [event("ann@x.co", "Viewed Product", "v1"), event("bob@x.co", "Viewed Product", "b1")],
        "test",
    )
    router = RouterActivities(
        db.engine, [MetricStatsHandler(), SegmentRoutingHandler()], statement_timeout_seconds=0.1
    )
    assert router.route_once() == 3  # two events, and bob's arrival as a new profile

    bob = db.scalar("SELECT id FROM profile WHERE email = 'bob@x.co'")
    assert members(db, cheap) == {ann, bob}
    pending = db.rows("SELECT kind, profile_id FROM routing_outbox WHERE routed_at IS NULL")
    assert [tuple(r) for r in pending] == [("segment_added", bob)]  # for the next batch
    views = "SELECT sum(count) FROM profile_metric_stat s JOIN metric m ON m.id = s.metric_id"
    assert db.scalar(views + " WHERE m.name = 'Viewed Product'") == 2  # v1 and b1
    assert members(db, "seg_heavy") == set()
    deferred = db.rows("SELECT profile_id FROM segment_recheck WHERE segment_id = 'seg_heavy'")
    assert {r[0] for r in deferred} == {ann, bob}  # the statement covered both
    assert db.scalar("SELECT count(*) FROM routing_dead_letter") == 0

    status = api.get("/v1/routing/status").json()
    assert status["segment_errors"] == 1
    [failing] = status["failing_segments"]
    assert failing["segment_id"] == "seg_heavy" and failing["deferred_profiles"] == 2
    assert failing["last_error"]
    assert failures_metric("seg_heavy") == before + 1


def test_a_segment_whose_definition_no_longer_parses_is_skipped_until_fixed(db):
    stored_segment(db, "seg_broken", one({"type": "metric", "metric": "Viewed Product", "x": 1}))
    cheap = live_segment(db, VIEWED)
    now = datetime.now(UTC)
    clock = [now]
    handler = SegmentRoutingHandler(clock=lambda: clock[0])
    store_events(db.engine, MetricDirectory(), [event("ann@x.co", "Viewed Product", "v1")], "test")
    route(db, [handler])
    ann = db.scalar("SELECT id FROM profile WHERE email = 'ann@x.co'")
    assert members(db, cheap) == {ann}
    assert db.scalar("SELECT failures FROM segment_routing_health") == 1

    # Repaired in place; the next batch after the back-off re-checks what was deferred.
    db.execute(
        "UPDATE segment SET definition = :d, version = 2 WHERE id = 'seg_broken'",
        d=json.dumps(VIEWED),
    )
    clock[0] = now + timedelta(hours=2)
    store_events(db.engine, MetricDirectory(), [event("bob@x.co", "Viewed Product", "b1")], "test")
    route(db, [handler])
    bob = db.scalar("SELECT id FROM profile WHERE email = 'bob@x.co'")
    assert members(db, "seg_broken") == {ann, bob}
    assert db.scalar("SELECT failures FROM segment_routing_health") == 0
    assert db.scalar("SELECT count(*) FROM segment_recheck") == 0


# ---- a poison item is parked -------------------------------------------------------------------


class FragileHandler:
    """Fails on the events whose unique_id it is told is poison, like a handler bug would."""

    name = "fragile"

    def __init__(self, poison: set[str]) -> None:
        self.poison = poison
        self.seen: list[str] = []

    def handle(self, session: Session, items: list[RoutedItem]) -> None:
        for item in items:
            if item.unique_id in self.poison:
                raise ValueError(f"cannot route {item.unique_id}")
        self.seen += [i.unique_id for i in items if i.kind is OutboxKind.event]


def order_count(db) -> int:
    return db.scalar("SELECT coalesce(sum(count), 0) FROM profile_metric_stat") or 0


def test_a_poison_item_is_parked_and_later_events_still_route(api, db):
    metrics = MetricDirectory()
    uids = [f"o{i}" for i in range(6)]
    store_events(
        db.engine,
        metrics,
        [event(f"p{i % 2}@x.co", "Placed Order", uid, 1.0) for i, uid in enumerate(uids)],
        "test",
    )
    fragile = FragileHandler({"o3"})
    route(db, [MetricStatsHandler(), fragile])

    assert sorted(fragile.seen) == ["o0", "o1", "o2", "o4", "o5"]
    assert order_count(db) == 5  # the rest of the batch committed, in order
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE routed_at IS NULL") == 0
    [parked] = api.get("/v1/routing/dead-letters").json()["data"]
    poison_outbox = db.scalar(
        "SELECT o.id FROM routing_outbox o JOIN event e ON e.id = o.event_id "
        "WHERE e.unique_id = 'o3'"
    )
    assert parked["outbox_id"] == poison_outbox
    assert parked["handler"] == "fragile" and "cannot route o3" in parked["error"]
    assert parked["kind"] == "event"
    assert api.get("/v1/routing/status").json()["dead_letters"] == 1

    # The parked item blocks nothing: the same profile's next event routes at once.
    store_events(db.engine, metrics, [event("p1@x.co", "Placed Order", "o6", 1.0)], "test")
    route(db, [MetricStatsHandler(), fragile])
    assert order_count(db) == 6

    # Fixed, the operator retries it: routed once, and the dead letter is gone.
    fragile.poison.clear()
    response = api.post(f"/v1/routing/dead-letters/{parked['id']}/retry")
    assert response.status_code == 202, response.text
    route(db, [MetricStatsHandler(), fragile])
    assert order_count(db) == 7
    assert fragile.seen.count("o3") == 1
    assert api.get("/v1/routing/dead-letters").json()["data"] == []
    assert api.post(f"/v1/routing/dead-letters/{parked['id']}/retry").status_code == 404


def test_a_batch_split_for_a_poison_item_does_not_re_check_a_failing_segment_again(api, db):
    # Found by the dev-server test: the failure record rolled back with the failed batch, so
    # every half of the split paid for the same failing segment again.
    stored_segment(db, "seg_broken", one({"type": "metric", "metric": "Viewed Product", "x": 1}))
    uids = [f"v{i}" for i in range(8)]
    store_events(
        db.engine,
        MetricDirectory(),
        [event(f"p{i % 2}@x.co", "Viewed Product", uid) for i, uid in enumerate(uids)],
        "test",
    )
    before = failures_metric("seg_broken")
    route(db, [SegmentRoutingHandler(), FragileHandler({"v5"})])

    assert failures_metric("seg_broken") == before + 1
    status = api.get("/v1/routing/status").json()
    assert status["segment_errors"] == 1 and status["dead_letters"] == 1
    [failing] = status["failing_segments"]
    assert failing["segment_id"] == "seg_broken" and failing["deferred_profiles"] == 2


def test_a_dead_letter_parked_again_gets_a_new_id(api, db):
    store_events(db.engine, MetricDirectory(), [event("p@x.co", "Placed Order", "o1")], "test")
    fragile = FragileHandler({"o1"})
    route(db, [fragile])
    [first] = api.get("/v1/routing/dead-letters").json()["data"]
    assert api.post(f"/v1/routing/dead-letters/{first['id']}/retry").status_code == 202
    route(db, [fragile])  # still poison: parked again
    [again] = api.get("/v1/routing/dead-letters").json()["data"]
    assert again["outbox_id"] == first["outbox_id"] and again["id"] != first["id"]
    # A stale retry (of the first parking) is refused, not applied to the new dead letter.
    assert api.post(f"/v1/routing/dead-letters/{first['id']}/retry").status_code == 404


def test_dead_letters_need_the_private_key(anonymous, ingest, db):
    assert anonymous.get("/v1/routing/dead-letters").status_code == 401
    assert ingest.get("/v1/routing/dead-letters").status_code == 403


def test_a_lost_connection_is_retried_not_parked(db):
    class Disconnected:
        name = "disconnected"

        def handle(self, session, items):
            raise OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)

    store_events(db.engine, MetricDirectory(), [event("a@x.co", "Placed Order", "o1")], "test")
    router = RouterActivities(db.engine, [Disconnected()])
    with pytest.raises(OperationalError):
        router.route_once()
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE routed_at IS NULL") == 2
    assert db.scalar("SELECT count(*) FROM routing_dead_letter") == 0


class WorkerDied(BaseException):
    """Stands for a crash: nothing in the router catches it, like a killed process."""


def test_a_row_that_kills_its_worker_is_parked_after_three_unfinished_tries(db):
    class Deadly:
        name = "deadly"

        def handle(self, session, items):
            if any(i.unique_id == "o1" for i in items):
                raise WorkerDied

    store_events(
        db.engine,
        MetricDirectory(),
        [event("a@x.co", "Placed Order", "o1"), event("a@x.co", "Placed Order", "o2")],
        "test",
    )
    router = RouterActivities(db.engine, [MetricStatsHandler(), Deadly()])
    assert router.route_oldest_alone() == 1  # the profile's arrival, before its orders
    for _ in range(3):  # what the activity's retries do after each crash
        with pytest.raises(WorkerDied):
            router.route_oldest_alone()
    assert db.scalar("SELECT count(*) FROM routing_dead_letter") == 0
    assert router.route_oldest_alone() == 1
    [(handler, error)] = db.rows("SELECT handler, error FROM routing_dead_letter")
    assert handler == "router" and "started 3 times and never finished" in error
    route(db, [MetricStatsHandler(), Deadly()])
    assert order_count(db) == 1  # o2 routed past the parked o1


async def test_the_router_workflow_routes_past_a_poison_item(temporal_server, db):
    from tests.test_routing import run_router, wait_until_routed
    from worker import ensure_router
    from workflows.router import RouterState

    store_events(
        db.engine,
        MetricDirectory(),
        [event(f"p{i}@x.co", "Placed Order", f"o{i}", 1.0) for i in range(4)],
        "test",
    )
    settings, wf_id, worker = await run_router(
        temporal_server, db, [MetricStatsHandler(), FragileHandler({"o2"})], RouterState()
    )
    async with worker:
        await ensure_router(temporal_server.client, settings, wf_id)
        await wait_until_routed(db)
        await temporal_server.client.get_workflow_handle(wf_id).terminate("test done")
    assert order_count(db) == 3
    assert db.scalar("SELECT handler FROM routing_dead_letter") == "fragile"
