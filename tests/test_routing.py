"""The router drains the outbox through a real Temporal workflow: once, in order, durably."""

import asyncio
import uuid
from collections import defaultdict

import pytest
from sqlmodel import Session

from activities.metric_stats import MetricStatsHandler
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.ingest.events import MetricDirectory, ingest
from herald.profiles.lists import add_members
from herald.routing.contract import RoutedItem
from models.enums import OutboxKind
from models.events import EventIn
from models.lists import ProfileList
from worker import build_worker, ensure_router
from workflows.router import EventRouterWorkflow, RouterState


class RecordingHandler:
    """Records what the router hands over, to check order and exactly-once delivery."""

    name = "recording"

    def __init__(self) -> None:
        self.items: list[RoutedItem] = []

    def handle(self, session: Session, items: list[RoutedItem]) -> None:
        # New profiles also announce themselves (profile_changed, for segments): not checked here.
        self.items.extend(i for i in items if i.kind is not OutboxKind.profile_changed)


def event(email: str, metric: str, uid: str, value: float | None = None, **extra) -> EventIn:
    return EventIn.model_validate(
        {"metric": metric, "profile": {"email": email}, "unique_id": uid, "value": value, **extra}
    )


async def wait_until_routed(db, within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while db.scalar("SELECT count(*) FROM routing_outbox WHERE routed_at IS NULL"):
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("the outbox was not drained in time")
        await asyncio.sleep(0.05)


async def routed_status(handle, expected: int) -> RouterState:
    """The router's own count lags the database by one activity result; wait for it."""
    status = await handle.query(EventRouterWorkflow.status)
    for _ in range(100):
        if status.routed_total >= expected:
            break
        await asyncio.sleep(0.05)
        status = await handle.query(EventRouterWorkflow.status)
    return status


async def run_router(temporal_server, db, handlers, state: RouterState, batch_size: int = 500):
    settings = Settings(
        database_url=db.url,
        task_queue=f"test-{uuid.uuid4()}",
        router_batch_size=batch_size,
        router_poll_seconds=0.5,
    )
    workflow_id = f"herald/router/{uuid.uuid4()}"
    worker = build_worker(temporal_server.client, settings, db.engine, handlers=handlers)
    return settings, workflow_id, worker


async def test_events_and_list_additions_are_routed_once_in_acceptance_order(temporal_server, db):
    metrics = MetricDirectory()
    ingest(db.engine, metrics, [event("ada@x.co", "Viewed Product", "v1")], "test")
    ingest(
        db.engine,
        metrics,
        [
            event("ada@x.co", "Placed Order", "o1", 50),
            event("grace@x.co", "Placed Order", "o2", 20),
            event("ada@x.co", "Placed Order", "o3", 30),
        ],
        "test",
    )
    ada = db.scalar("SELECT id FROM profile WHERE email = 'ada@x.co'")
    with session_scope(db.engine) as session:
        session.add(ProfileList(id="lst_vip", name="VIP"))
        session.flush()
        add_members(session, "lst_vip", [ada])

    recorder = RecordingHandler()
    settings, wf_id, worker = await run_router(
        temporal_server, db, [MetricStatsHandler(), recorder], RouterState()
    )
    async with worker:
        await ensure_router(temporal_server.client, settings, wf_id)
        await wait_until_routed(db)
        handle = temporal_server.client.get_workflow_handle(wf_id)
        status = await routed_status(handle, 7)
        await handle.terminate("test done")

    assert status.routed_total == 7  # 4 events, 1 list addition, 2 new profiles
    outbox_ids = [i.outbox_id for i in recorder.items]
    assert outbox_ids == sorted(outbox_ids) and len(set(outbox_ids)) == 5
    ada_items = [(i.kind, i.unique_id) for i in recorder.items if i.profile_id == ada]
    assert ada_items == [
        (OutboxKind.event, "v1"),
        (OutboxKind.event, "o1"),
        (OutboxKind.event, "o3"),
        (OutboxKind.list_added, None),
    ]
    list_item = next(i for i in recorder.items if i.kind is OutboxKind.list_added)
    assert list_item.list_id == "lst_vip"
    stats = db.rows(
        "SELECT p.email, s.count, s.total_value FROM profile_metric_stat s "
        "JOIN profile p ON p.id = s.profile_id JOIN metric m ON m.id = s.metric_id "
        "WHERE m.name = 'Placed Order' ORDER BY p.email"
    )
    assert [tuple(r) for r in stats] == [("ada@x.co", 2, 80.0), ("grace@x.co", 1, 20.0)]


async def test_router_continues_as_new_and_still_routes_everything_once(temporal_server, db):
    metrics = MetricDirectory()
    ingest(
        db.engine,
        metrics,
        [event(f"p{i % 3}@x.co", "Placed Order", f"o{i}", 1.0) for i in range(12)],
        "test",
    )
    recorder = RecordingHandler()
    settings, wf_id, worker = await run_router(
        temporal_server, db, [MetricStatsHandler(), recorder], RouterState(), batch_size=2
    )
    async with worker:
        await ensure_router(
            temporal_server.client, settings, wf_id, RouterState(max_batches_per_run=2)
        )
        await wait_until_routed(db)
        handle = temporal_server.client.get_workflow_handle(wf_id)
        status = await routed_status(handle, 15)
        await handle.terminate("test done")

    assert status.runs >= 2  # 15 rows, 2 per batch, 2 batches per run: 3 runs at least
    assert status.routed_total == 15  # 12 events and 3 new profiles
    assert sorted(i.unique_id for i in recorder.items) == sorted(f"o{i}" for i in range(12))
    assert db.scalar("SELECT sum(count) FROM profile_metric_stat") == 12


async def test_backfilled_events_reach_handlers_marked_as_backfill(temporal_server, db):
    ingest(
        db.engine,
        MetricDirectory(),
        [
            event(
                "old@x.co", "Placed Order", "old-1", 10, backfill=True, time="2024-02-01T00:00:00Z"
            )
        ],
        "test",
    )
    recorder = RecordingHandler()
    settings, wf_id, worker = await run_router(
        temporal_server, db, [MetricStatsHandler(), recorder], RouterState()
    )
    async with worker:
        await ensure_router(temporal_server.client, settings, wf_id)
        await wait_until_routed(db)
        await temporal_server.client.get_workflow_handle(wf_id).terminate("test done")
    [item] = recorder.items
    assert item.backfill is True
    # Stats still count history: "has placed an order" must see backfilled orders.
    assert db.scalar("SELECT count FROM profile_metric_stat") == 1


async def test_router_is_visible_to_operators_by_search_attribute(temporal_server, db):
    settings, wf_id, worker = await run_router(
        temporal_server, db, [MetricStatsHandler()], RouterState()
    )
    async with worker:
        await ensure_router(temporal_server.client, settings, wf_id)
        found = []
        for _ in range(50):
            found = [
                w.id
                async for w in temporal_server.client.list_workflows(
                    f"HeraldKind = 'router' AND WorkflowId = '{wf_id}'"
                )
            ]
            if found:
                break
            await asyncio.sleep(0.1)
        await temporal_server.client.get_workflow_handle(wf_id).terminate("test done")
    assert found == [wf_id]


def test_handler_order_groups_are_independent_of_batches():
    """Sanity of the recording helper itself: it keeps per-profile order."""
    recorder = RecordingHandler()
    items = [
        RoutedItem(outbox_id=i, kind=OutboxKind.event, profile_id=f"p{i % 2}", backfill=False)
        for i in range(4)
    ]
    recorder.handle(None, items[:2])
    recorder.handle(None, items[2:])
    per_profile = defaultdict(list)
    for item in recorder.items:
        per_profile[item.profile_id].append(item.outbox_id)
    assert per_profile == {"p0": [0, 2], "p1": [1, 3]}
