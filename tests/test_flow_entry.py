"""Entering flows: idempotent triggers, re-entry policies, filters, and versioned definitions."""

from datetime import timedelta

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.flow_world import start_world
from tests.test_flow_scenarios import chain, email
from workflows.flow_enrollment import FlowEnrollmentWorkflow

DAY = timedelta(days=1)


@pytest.fixture
async def world(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        yield world


def order_flow(reentry: dict, **extra) -> dict:
    return chain(
        {
            "trigger": {"type": "metric", "metric": "Placed Order"},
            "reentry": reentry,
            "steps": [email("thanks", "Thanks!", smart_sending=False)],
            **extra,
        }
    )


async def test_the_same_order_sent_twice_enrols_once(world):
    world.flow(order_flow({"mode": "every_time"}))
    buyer = world.profile("twice@example.com")
    await world.event("Placed Order", buyer, "ORDER-1", value=10)
    await world.event("Placed Order", buyer, "ORDER-1", value=10)  # a retried webhook
    assert len(world.enrollments(buyer)) == 1
    assert len(world.sent(buyer)) == 1
    await world.event("Placed Order", buyer, "ORDER-2", value=10)
    assert len(world.enrollments(buyer)) == 2


async def test_once_ever_blocks_a_second_order(world):
    world.flow(order_flow({"mode": "once"}))
    buyer = world.profile("once@example.com")
    await world.event("Placed Order", buyer, "O-1")
    await world.advance(30 * DAY)
    await world.event("Placed Order", buyer, "O-2")
    assert len(world.enrollments(buyer)) == 1


async def test_cooldown_allows_re_entry_after_n_days(world):
    world.flow(order_flow({"mode": "cooldown", "cooldown_days": 7}))
    buyer = world.profile("cool@example.com")
    await world.event("Placed Order", buyer, "C-1")
    await world.advance(6 * DAY)
    await world.event("Placed Order", buyer, "C-2")
    assert len(world.enrollments(buyer)) == 1, "still cooling down on day 6"
    await world.advance(DAY)
    await world.event("Placed Order", buyer, "C-3")
    assert len(world.enrollments(buyer)) == 2


async def test_trigger_filters_and_flow_filters_are_checked_at_entry(world):
    world.flow(
        chain(
            {
                "trigger": {
                    "type": "metric",
                    "metric": "Placed Order",
                    "filters": [{"property": "country", "operator": "equals", "value": "NL"}],
                },
                "filters": [
                    {"type": "property", "property": "vip", "operator": "equals", "value": True}
                ],
                "steps": [email("thanks", "Dank je!")],
            }
        )
    )
    vip = world.profile("vip-nl@example.com", vip=True)
    regular = world.profile("regular-nl@example.com", vip=False)
    await world.event("Placed Order", vip, "F-1", country="NL")
    await world.event("Placed Order", vip, "F-2", country="BE")
    await world.event("Placed Order", regular, "F-3", country="NL")
    assert len(world.enrollments(vip)) == 1
    assert world.enrollments(regular) == []


async def test_a_profile_that_stops_matching_the_filters_exits_with_reason_filter(world):
    world.flow(
        chain(
            {
                "trigger": {"type": "metric", "metric": "Started Checkout"},
                "filters": [
                    {"type": "property", "property": "region", "operator": "equals", "value": "EU"}
                ],
                "steps": [
                    email("first", "one"),
                    {"id": "wait", "type": "time_delay", "amount": 2, "unit": "days"},
                    email("second", "two"),
                ],
            }
        )
    )
    mover = world.profile("mover@example.com", region="EU")
    await world.event("Started Checkout", mover, "M-1")
    from herald.core.db import session_scope
    from models.profile import Profile

    with session_scope(world.db.engine) as session:
        profile = session.get(Profile, mover)
        profile.properties = {"region": "US"}
        session.add(profile)
    await world.advance(2 * DAY)
    assert world.deliveries(mover)[-1] == ("second", "skipped", "filter")
    [(_, status, exit_reason, _)] = world.enrollments(mover)
    assert (status, exit_reason) == ("exited", "filter")


def three_step(label: str) -> dict:
    return chain(
        {
            "trigger": {"type": "metric", "metric": "Started Checkout"},
            "reentry": {"mode": "every_time"},
            "steps": [
                {"id": "wait", "type": "time_delay", "amount": 1, "unit": "days"},
                email("reminder", f"{label} reminder", smart_sending=False),
            ],
        }
    )


async def test_editing_a_live_flow_leaves_sleeping_enrollments_on_their_version(world):
    flow_id = world.flow(three_step("v1"))
    shoppers = [world.profile(f"s{i}@example.com") for i in range(100)]
    await world.events("Started Checkout", {s: f"cart-{i}" for i, s in enumerate(shoppers)})
    assert world.db.scalar("SELECT count(*) FROM flow_enrollment WHERE version = 1") == 100

    assert world.new_version(flow_id, three_step("v2")) == 2
    late = world.profile("late@example.com")
    await world.event("Started Checkout", late, "cart-late")
    await world.advance(DAY)

    bodies = [body for _, _, body in world.sent()]
    assert bodies.count("v1 reminder") == 100
    assert bodies.count("v2 reminder") == 1
    assert world.sent(late) == [("reminder", "email", "v2 reminder")]
    assert world.db.scalar("SELECT count(*) FROM flow_enrollment WHERE status = 'completed'") == 101

    # Determinism: today's workflow code replays the histories these runs produced.
    histories = []
    for workflow_id, *_ in world.db.rows("SELECT workflow_id FROM flow_enrollment LIMIT 5"):
        handle = world.client.get_workflow_handle(workflow_id)
        histories.append(await handle.fetch_history())
    replayer = Replayer(workflows=[FlowEnrollmentWorkflow], data_converter=pydantic_data_converter)
    for history in histories:
        assert isinstance(history, WorkflowHistory)
        await replayer.replay_workflow(history)


async def test_an_enrollment_whose_start_was_lost_in_a_crash_is_started_later(world, monkeypatch):
    world.flow(order_flow({"mode": "every_time"}))
    buyer = world.profile("crashed@example.com")

    async def temporal_down(*_args):
        raise RuntimeError("worker died between the commit and the start")

    monkeypatch.setattr(world.flow_handler.bridge, "_start", temporal_down)
    with pytest.raises(RuntimeError):
        await world.event("Placed Order", buyer, "LOST-1")
    monkeypatch.undo()
    # Committed with the routed event, but no workflow yet.
    [(workflow_id, status, _, _)] = world.enrollments(buyer)
    assert status == "running"
    assert world.db.scalar("SELECT workflow_started FROM flow_enrollment") in (False, 0)
    assert world.sent(buyer) == []

    await world.env.sleep(timedelta(minutes=1))
    world.flow_handler._last_recovery = 0.0  # the periodic check is due
    await world.route()
    await world.until(lambda: len(world.sent(buyer)) == 1)
    assert world.db.scalar("SELECT workflow_started FROM flow_enrollment") in (True, 1)
