"""Flows as SPEC.md tells them, on Temporal's time-skipping server: post-purchase and win-back."""

from datetime import timedelta

import pytest

from herald.core.db import session_scope
from herald.profiles.lists import add_members
from tests.flow_world import start_world

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
async def world(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        yield world


def email(step_id: str, body: str, smart_sending: bool = True, **extra) -> dict:
    return {
        "id": step_id,
        "type": "message",
        "channel": "email",
        "content": {"subject": step_id, "body": body},
        "smart_sending": smart_sending,
        **extra,
    }


def delay(step_id: str, days: int, next_step: str | None) -> dict:
    return {"id": step_id, "type": "time_delay", "amount": days, "unit": "days", "next": next_step}


POST_PURCHASE = {
    "trigger": {"type": "metric", "metric": "Placed Order"},
    "reentry": {"mode": "every_time"},
    "steps": [
        {
            "id": "first-order",
            "type": "conditional_split",
            "conditions": [
                {"type": "metric_count", "metric": "Placed Order", "operator": "equals", "count": 1}
            ],
            "yes": "big-order",
            "no": "thanks-again",
        },
        {
            "id": "big-order",
            "type": "trigger_split",
            "conditions": [{"property": "$value", "operator": "gt", "value": 100}],
            "yes": "welcome-vip",
            "no": "welcome",
        },
        email(
            "welcome-vip", "Welcome {{ profile.first_name }}, VIP! {{ event.value }}", next="wait-7"
        ),
        email("welcome", "Welcome {{ profile.first_name | default: 'friend' }}", next="wait-7"),
        email("thanks-again", "Good to see you again", next="wait-7"),
        delay("wait-7", 7, "review"),
        email("review", "How was order {{ event.unique_id }}?", next="wait-14"),
        delay("wait-14", 7, "cross-sell"),
        email("cross-sell", "You may also like ..."),
    ],
}


async def test_post_purchase_sends_the_right_messages_at_the_right_times(world):
    world.flow(POST_PURCHASE, name="Post-purchase")
    vip = world.profile("vip@example.com", first_name="Vera")
    newbie = world.profile("new@example.com")
    regular = world.profile("regular@example.com")
    # The regular's earlier order is history (backfill): it counts, but triggers nothing.
    await world.event("Placed Order", regular, "old-1", value=20, backfill=True, ago=30 * DAY)

    await world.event("Placed Order", vip, "A-1", value=150)
    await world.event("Placed Order", newbie, "B-1", value=40)
    await world.event("Placed Order", regular, "C-1", value=500)

    assert [s[0] for s in world.sent(vip)] == ["welcome-vip"]
    assert world.sent(vip)[0][2] == "Welcome Vera, VIP! 150.0"
    assert [s[0] for s in world.sent(newbie)] == ["welcome"]
    assert world.sent(newbie)[0][2] == "Welcome friend"
    assert [s[0] for s in world.sent(regular)] == ["thanks-again"]

    await world.advance(7 * DAY - HOUR)
    assert len(world.sent()) == 3, "nothing before day 7"
    await world.advance(HOUR)
    assert [s[0] for s in world.sent(vip)] == ["welcome-vip", "review"]
    assert world.sent(newbie)[-1] == ("review", "email", "How was order B-1?")
    await world.advance(7 * DAY)
    for profile in (vip, newbie, regular):
        assert [s[0] for s in world.sent(profile)][-2:] == ["review", "cross-sell"]
        [(_, status, exit_reason, _)] = world.enrollments(profile)
        assert (status, exit_reason) == ("completed", None)
    assert len(world.sent()) == 9


WIN_BACK = {
    "trigger": {"type": "list", "list_id": "LIST"},
    "exit_metric": "Placed Order",
    "steps": [
        email("email-1", "We miss you"),
        delay("wait-1", 3, "email-2"),
        email("email-2", "Still there?"),
        delay("wait-2", 3, "email-3"),
        email("email-3", "Here is 15% off: COMEBACK15"),
    ],
}


_LINEAR = {
    "message",
    "time_delay",
    "webhook",
    "internal_alert",
    "update_profile",
    "add_to_list",
    "remove_from_list",
}


def chain(definition: dict) -> dict:
    """Links each step to the one after it, unless it names its own `next`."""
    steps = [dict(s) for s in definition["steps"]]
    for step, after in zip(steps, steps[1:] + [None], strict=True):
        if step["type"] in _LINEAR and "next" not in step:
            step["next"] = after["id"] if after else None
    return {**definition, "steps": steps}


async def lapsed_list(world) -> str:
    from models.lists import ProfileList

    with session_scope(world.db.engine) as session:
        session.add(ProfileList(id="li_lapsed", name="Lapsed"))
    return "li_lapsed"


async def add_to_list(world, list_id: str, *profiles: str) -> None:
    with session_scope(world.db.engine) as session:
        add_members(session, list_id, list(profiles))
    await world.route()


async def test_win_back_ends_the_moment_the_customer_orders(world):
    list_id = await lapsed_list(world)
    world.flow(chain({**WIN_BACK, "trigger": {"type": "list", "list_id": list_id}}))
    stays = world.profile("stays@example.com")
    converts = world.profile("converts@example.com")
    await add_to_list(world, list_id, stays, converts)
    assert [s[0] for s in world.sent()] == ["email-1", "email-1"]

    await world.advance(DAY)
    await world.event("Placed Order", converts, "W-1", value=60)
    # Closed within the same simulated instant: no waiting for the 3-day timer.
    [(workflow_id, status, exit_reason, _)] = world.enrollments(converts)
    assert (status, exit_reason) == ("exited", "converted")
    state = await world.state(workflow_id)
    assert state.exit_reason == "converted" and state.current_step == "wait-1"

    await world.advance(10 * DAY)
    assert [s[0] for s in world.sent(converts)] == ["email-1"]
    assert [s[0] for s in world.sent(stays)] == ["email-1", "email-2", "email-3"]
    [(_, status, exit_reason, _)] = world.enrollments(stays)
    assert (status, exit_reason) == ("completed", None)


async def test_a_conversion_racing_the_send_stops_the_message(world, monkeypatch):
    """The exit signal is late (or lost): the send-time check in deliver still stops it."""
    list_id = await lapsed_list(world)
    world.flow(chain({**WIN_BACK, "trigger": {"type": "list", "list_id": list_id}}))
    racer = world.profile("racer@example.com")
    await add_to_list(world, list_id, racer)

    await world.advance(3 * DAY - timedelta(seconds=1), margin=timedelta(0))

    async def signal_lost(*_args):
        return None

    monkeypatch.setattr(world.flow_handler.bridge, "_signal", signal_lost)
    await world.event("Placed Order", racer, "R-1", value=10)
    monkeypatch.undo()
    await world.advance(timedelta(seconds=1), margin=timedelta(seconds=5))

    assert [s[0] for s in world.sent(racer)] == ["email-1"]
    assert world.deliveries(racer)[-1] == ("email-2", "skipped", "exited")
    [(_, status, exit_reason, _)] = world.enrollments(racer)
    assert (status, exit_reason) == ("exited", "converted")
