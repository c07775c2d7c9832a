"""Delivery policy inside flows: smart sending, quiet hours, consent, manual review, webhooks."""

import threading
from datetime import UTC, datetime, time, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from zoneinfo import ZoneInfo

import pytest

from herald.flows.contract import SIGNAL_APPROVE, SIGNAL_REJECT
from tests.flow_world import start_world
from tests.test_flow_scenarios import chain, email

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


@pytest.fixture
async def world(skipping_env, db):
    world, worker = await start_world(skipping_env, db)
    async with worker:
        yield world


def metric_flow(*steps: dict, metric: str = "Started Checkout", **extra) -> dict:
    return chain({"trigger": {"type": "metric", "metric": metric}, "steps": list(steps), **extra})


def hours(step_id: str, amount: int) -> dict:
    return {"id": step_id, "type": "time_delay", "amount": amount, "unit": "hours"}


async def test_smart_sending_skips_a_second_email_within_16_hours(world):
    world.flow(
        metric_flow(
            email("first", "one"),
            hours("wait-10h", 10),
            email("second", "two"),
            hours("wait-7h", 7),
            email("third", "three"),
        )
    )
    shopper = world.profile("shopper@example.com")
    await world.event("Started Checkout", shopper, "cart-1")
    await world.advance(17 * HOUR)

    assert [s[0] for s in world.sent(shopper)] == ["first", "third"]
    assert ("second", "skipped", "smart_sending") in world.deliveries(shopper)
    # Skipped, not rescheduled: the walk went on and the timeline says why.
    reasons = world.db.rows(
        "SELECT step_id, outcome, reason FROM enrollment_step WHERE step_id = 'second'"
    )
    assert [tuple(r) for r in reasons] == [("second", "skipped", "smart_sending")]


async def test_a_message_can_opt_out_of_smart_sending(world):
    world.flow(
        metric_flow(
            email("first", "one"),
            hours("wait-1h", 1),
            email("receipt", "two", smart_sending=False),
        )
    )
    shopper = world.profile("optout@example.com")
    await world.event("Started Checkout", shopper, "cart-2")
    await world.advance(HOUR)
    assert [s[0] for s in world.sent(shopper)] == ["first", "receipt"]


async def test_quiet_hours_hold_an_sms_until_eight_in_the_morning_local_time(world):
    tz = "America/New_York"
    world.flow(
        metric_flow(
            {
                "id": "until-evening",
                "type": "time_delay",
                "amount": 1,
                "unit": "days",
                "at_time": "22:30",
            },
            {
                "id": "sms",
                "type": "message",
                "channel": "sms",
                "content": {"body": "Your cart is waiting"},
            },
        )
    )
    night_owl = world.profile(
        "owl@example.com", timezone=tz, phone="+12125550123", consent=("sms",)
    )
    await world.event("Started Checkout", night_owl, "cart-3")
    await world.advance(3 * DAY)  # past 22:30 local tomorrow and the next morning

    [row] = world.db.rows(
        "SELECT d.sent_at FROM delivery d WHERE d.profile_id = :p AND d.status = 'sent'",
        p=night_owl,
    )
    sent_at = row[0] if isinstance(row[0], datetime) else datetime.fromisoformat(row[0])
    if sent_at.tzinfo is None:  # SQLite hands back naive UTC through raw SQL
        sent_at = sent_at.replace(tzinfo=UTC)
    sent_local = sent_at.astimezone(ZoneInfo(tz))
    assert sent_local.time().replace(second=0, microsecond=0) == time(8, 0)
    held = world.db.rows("SELECT outcome, reason FROM enrollment_step WHERE step_id = 'sms'")
    assert ("held", "quiet_hours") in [tuple(r) for r in held]


async def test_consent_withdrawn_mid_flow_blocks_the_next_message(world):
    world.flow(metric_flow(email("first", "one"), hours("wait-1d", 24), email("second", "two")))
    fickle = world.profile("fickle@example.com")
    await world.event("Started Checkout", fickle, "cart-4")
    world.set_consent(fickle, "email", "unsubscribed")
    await world.advance(DAY)

    assert [s[0] for s in world.sent(fickle)] == ["first"]
    assert world.deliveries(fickle)[-1] == ("second", "skipped", "no_consent")


async def test_manual_flow_queues_messages_until_an_operator_decides(world):
    world.flow(
        metric_flow(email("first", "one"), hours("wait-1d", 24), email("second", "two")),
        status="manual",
    )
    shopper = world.profile("manual@example.com")
    await world.event("Started Checkout", shopper, "cart-5")
    assert world.sent(shopper) == []
    [(item_status, step)] = world.db.rows("SELECT status, step_id FROM review_item")
    assert (item_status, step) == ("pending", "first")
    [(workflow_id, *_)] = world.enrollments(shopper)
    assert (await world.state(workflow_id)).waiting_for == "review"

    await world.client.get_workflow_handle(workflow_id).signal(SIGNAL_APPROVE, "first")
    await world.settle()
    assert [s[0] for s in world.sent(shopper)] == ["first"]

    await world.advance(DAY)
    await world.client.get_workflow_handle(workflow_id).signal(SIGNAL_REJECT, "second")
    await world.settle()
    assert [s[0] for s in world.sent(shopper)] == ["first"]
    outcomes = world.db.rows(
        "SELECT outcome, reason FROM enrollment_step WHERE step_id = 'second' ORDER BY id"
    )
    assert [tuple(r) for r in outcomes] == [("queued", "manual_review"), ("skipped", "rejected")]


class _Hook(BaseHTTPRequestHandler):
    """Answers from a script of status codes and keeps what it received."""

    script: list[int] = []
    received: list[tuple[str, bytes]] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append((self.headers["idempotency-key"], body))
        status = type(self).script.pop(0) if type(self).script else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args):
        pass  # keep the test output quiet


@pytest.fixture
def hook_server():
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hook.script, _Hook.received = [], []
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


@pytest.fixture
async def hook_world(skipping_env, db):
    world, worker = await start_world(skipping_env, db, webhook_allow_hosts=["127.0.0.1"])
    async with worker:
        yield world


async def test_a_webhook_step_retries_5xx_and_skips_on_4xx(hook_world, hook_server):
    world = hook_world
    world.flow(
        metric_flow(
            {
                "id": "notify-crm",
                "type": "webhook",
                "url": hook_server,
                "body": '{"email": "{{ profile.email }}"}',
            },
            email("after", "still going", smart_sending=False),
        )
    )
    _Hook.script = [503, 500]  # two failures, then 200
    lucky = world.profile("lucky@example.com")
    await world.event("Started Checkout", lucky, "hook-1")
    await world.advance(timedelta(minutes=5))  # past the retry back-off
    keys = {key for key, _ in _Hook.received}
    assert len(_Hook.received) == 3 and len(keys) == 1, "retried with one idempotency key"
    assert _Hook.received[-1][1] == b'{"email": "lucky@example.com"}'
    steps = world.db.rows(
        "SELECT outcome FROM enrollment_step WHERE step_id = 'notify-crm' AND outcome <> 'entered'"
    )
    assert [r[0] for r in steps] == ["processed"]

    _Hook.script = [404]
    unlucky = world.profile("unlucky@example.com")
    await world.event("Started Checkout", unlucky, "hook-2")
    await world.until(lambda: world.enrollments(unlucky)[0][1] == "completed")
    skipped = world.db.rows(
        "SELECT outcome, reason FROM enrollment_step WHERE step_id = 'notify-crm' "
        "AND profile_id = :p AND outcome <> 'entered'",
        p=unlucky,
    )
    assert [tuple(r) for r in skipped] == [("skipped", "http_404")]
    assert [s[0] for s in world.sent(unlucky)] == ["after"], "a skipped webhook does not stop"


async def test_a_webhook_that_fails_for_a_whole_day_is_skipped_and_the_walk_goes_on(
    hook_world, hook_server
):
    world = hook_world
    world.flow(
        metric_flow(
            {"id": "notify", "type": "webhook", "url": hook_server},
            email("after", "still going", smart_sending=False),
        )
    )
    _Hook.script = [503] * 100  # more failures than a day of back-off retries
    shopper = world.profile("down@example.com")
    await world.event("Started Checkout", shopper, "down-1")
    await world.advance(timedelta(hours=25))
    await world.until(lambda: world.enrollments(shopper)[0][1] == "completed")

    steps = world.db.rows(
        "SELECT outcome, reason FROM enrollment_step WHERE step_id = 'notify' "
        "AND outcome <> 'entered'"
    )
    assert [tuple(r) for r in steps] == [("skipped", "webhook_gave_up")]
    assert [s[0] for s in world.sent(shopper)] == ["after"]


async def test_a_review_decision_whose_signal_was_lost_is_picked_up_from_the_database(world):
    world.flow(metric_flow(email("first", "one")), status="manual")
    shopper = world.profile("lost-signal@example.com")
    await world.event("Started Checkout", shopper, "cart-6")
    # What the API does first; here its signal never arrives.
    world.db.execute("UPDATE review_item SET status = 'approved'")
    await world.advance(timedelta(hours=6))
    assert [s[0] for s in world.sent(shopper)] == ["first"]
