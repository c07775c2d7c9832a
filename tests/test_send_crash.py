"""Crash test over SMTP: kill -9 the worker while a 20,000-recipient campaign is handing email
to a relay (a real aiosmtpd server in this process, which outlives the worker), then restart it.

A page's recipients are claimed (`sending`) in one transaction, handed to the relay over the
pool's connections, and recorded in a second transaction once the page's sends are done. The
relay answers 5,500 messages and then holds its answers (it keeps each message it is given but
delays the 250, as a slow relay does), so the kill always lands mid-page: the sixth page's
1,000 claims open, 500 of them answered, one more taken on each pooled connection, the rest not
yet handed over. The retry of the page comes when its attempt's 30 s start-to-close timeout
expires: a third of this test's wall time.

In flight at the kill, the bound on duplicates: the messages the relay has (their DATA ended)
whose delivery row is still `sending` (claimed, not recorded) once the worker is dead. Only
those can arrive twice. They are at most one page (1,000: a path sends one page at a time);
here, 500 answered plus at most one held per connection (pool size 4).

At least once (the account's `delivery_guarantees`), the retry resends the page's claims under
the same key and Message-ID; at most once, it marks them `unknown` and sends none of them.
"""

import asyncio
import time
import uuid
from dataclasses import dataclass

from herald.campaigns.contract import campaign_workflow_id
from tests.crash_world import (
    audience,
    due_campaign,
    kill_worker,
    start_worker,
    stop_worker,
    wait_for,
)
from tests.fakes.smtp_sink import SmtpSink, smtp_sink
from workflows.router import ROUTER_WORKFLOW_ID

RECIPIENTS = 20_000
# The at-most-once run checks what happens to one page's claims; fewer recipients do.
AT_MOST_ONCE_RECIPIENTS = 8_000
PAGE = 1_000  # PageRequest.page_size
ANSWERED_BEFORE_THE_KILL = 5 * PAGE + 500
POOL_SIZE = 4  # SmtpConfig's default, which the HERALD_SMTP_* settings keep


@dataclass
class AtTheKill:
    claimed: set[str]  # addresses whose delivery row was `sending`
    in_flight: set[str]  # of those, the ones the relay had received
    received: int  # messages the relay had received


@dataclass
class Run:
    recipients: int
    at_the_kill: AtTheKill
    per_recipient: dict[str, int]  # messages the relay received for each address
    message_ids: dict[str, set[str]]
    unknown: set[str]  # addresses of the deliveries GET /v1/deliveries?status=unknown lists
    # Seconds from the test's start: the kill, the retry's first message, the campaign sent.
    killed_at: float
    resumed_at: float
    done_at: float

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.per_recipient.values())

    def report(self, guarantee: str) -> None:
        """The numbers for the issue's note (pytest -s shows them)."""
        print(
            f"\n{guarantee}: recipients={self.recipients}"
            f" received={sum(self.per_recipient.values())} duplicates={self.duplicates}"
            f" in_flight={len(self.at_the_kill.in_flight)}"
            f" claimed_at_kill={len(self.at_the_kill.claimed)} unknown={len(self.unknown)}"
            f" killed_at={self.killed_at:.1f}s resumed_at={self.resumed_at:.1f}s"
            f" wall={self.done_at:.1f}s"
        )


def addresses(recipients: int) -> set[str]:
    return {f"pr_crash{i:06d}@example.com" for i in range(recipients)}


def listed_unknown(api) -> set[str]:
    found: set[str] = set()
    params: dict[str, str | int] = {"status": "unknown", "limit": 500}
    while True:
        page = api.get("/v1/deliveries", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        found |= {d["to"] for d in body["data"]}
        if body["next_cursor"] is None:
            return found
        params["cursor"] = body["next_cursor"]


async def crash_mid_send(db, temporal_server, api, guarantee: str, recipients: int) -> Run:
    """Sends a campaign to `recipients` over SMTP, kills the worker once the relay holds its
    answers, restarts it and lets the campaign finish."""
    started = time.monotonic()
    changed = api.patch(
        "/v1/account", json={"delivery_guarantees": {"email": {"marketing": guarantee}}}
    )
    assert changed.status_code == 200, changed.text
    snapshot = due_campaign(db, audience(db, recipients))
    task_queue = f"send-crash-{uuid.uuid4()}"
    client = temporal_server.client
    try:
        with smtp_sink(hold_after=ANSWERED_BEFORE_THE_KILL) as sink:
            smtp = {
                "HERALD_EMAIL_PROVIDER": "smtp",
                "HERALD_SMTP_HOST": "127.0.0.1",
                "HERALD_SMTP_PORT": str(sink.port),
                "HERALD_SMTP_TLS": "none",
            }
            worker = start_worker(db, temporal_server, task_queue, **smtp)
            try:
                handle = await client.start_workflow(
                    "Campaign",
                    snapshot,
                    id=campaign_workflow_id(snapshot.settings.campaign_id),
                    task_queue=task_queue,
                )
                await wait_for(sink.holding, 120, "the relay to hold a message")
                # The worker waits on the relay's answers now: nothing moves until the kill.
                kill_worker(worker)
                killed_at = time.monotonic() - started
                sink.wait_closed(5)
                at_the_kill = what_was_in_flight(db, sink)
                sink.release()

                worker = start_worker(db, temporal_server, task_queue, **smtp)
                # The page is retried once its attempt's start-to-close timeout (30 s) expires.
                await wait_for(
                    lambda: len(sink.received) > at_the_kill.received, 120, "the page's retry"
                )
                resumed_at = time.monotonic() - started
                assert await asyncio.wait_for(handle.result(), 180) == "sent"
                done_at = time.monotonic() - started
            finally:
                stop_worker(worker)
                # `herald worker` started the shared router on this test's queue.
                await client.get_workflow_handle(ROUTER_WORKFLOW_ID).terminate("test done")
            assert sink.max_open <= POOL_SIZE
            per_recipient, message_ids = dict(sink.per_recipient()), sink.message_ids()
        return Run(
            recipients,
            at_the_kill,
            per_recipient,
            message_ids,
            listed_unknown(api),
            killed_at,
            resumed_at,
            done_at,
        )
    finally:
        api.patch("/v1/account", json={"delivery_guarantees": {"email": {}}})


def what_was_in_flight(db, sink: SmtpSink) -> AtTheKill:
    claimed = {row[0] for row in db.rows("SELECT to_address FROM delivery WHERE status='sending'")}
    received = sink.per_recipient()
    at_the_kill = AtTheKill(
        claimed=claimed,
        in_flight={address for address in claimed if received[address]},
        received=received.total(),
    )
    # The kill landed mid-page: the five pages before recorded, the sixth's claims all open,
    # 500 of them answered and at most one held on each pooled connection.
    assert db.scalar("SELECT count(*) FROM delivery WHERE status='sent'") == 5 * PAGE
    assert len(claimed) == PAGE
    assert ANSWERED_BEFORE_THE_KILL < at_the_kill.received <= ANSWERED_BEFORE_THE_KILL + POOL_SIZE
    assert len(at_the_kill.in_flight) == at_the_kill.received - 5 * PAGE
    return at_the_kill


async def test_killed_worker_at_least_once_reaches_everyone_and_repeats_only_what_was_in_flight(
    temporal_server, db, api
):
    run = await crash_mid_send(db, temporal_server, api, "at_least_once", RECIPIENTS)
    run.report("at_least_once")

    assert set(run.per_recipient) == addresses(RECIPIENTS), "every recipient got the message"
    repeated = {address for address, count in run.per_recipient.items() if count > 1}
    assert run.duplicates <= len(run.at_the_kill.in_flight)
    assert repeated <= run.at_the_kill.in_flight
    assert max(run.per_recipient.values()) == 2
    # A resend carries the first attempt's Message-ID, so a receiver that dedupes drops it, and
    # the delivery row records that same id.
    assert all(len(run.message_ids[address]) == 1 for address in repeated)
    assert len({next(iter(ids)) for ids in run.message_ids.values()}) == RECIPIENTS
    recorded = dict(db.rows("SELECT to_address, provider_message_id FROM delivery"))
    assert all(recorded[address] in run.message_ids[address] for address in repeated)
    assert run.unknown == set()
    assert db.scalar("SELECT count(*) FROM delivery WHERE status = 'sent'") == RECIPIENTS
    assert db.scalar("SELECT count(DISTINCT idempotency_key) FROM delivery") == RECIPIENTS
    assert db.scalar("SELECT status FROM campaign") == "sent"


async def test_killed_worker_at_most_once_repeats_nothing_and_lists_the_unknown(
    temporal_server, db, api
):
    run = await crash_mid_send(db, temporal_server, api, "at_most_once", AT_MOST_ONCE_RECIPIENTS)
    run.report("at_most_once")

    assert run.duplicates == 0
    # What the dead attempt had claimed is not sent again: it is listed for the operator, those
    # the relay had and those it never saw alike (the worker cannot tell them apart).
    assert run.unknown == run.at_the_kill.claimed
    assert set(run.per_recipient) | run.unknown == addresses(AT_MOST_ONCE_RECIPIENTS)
    assert set(run.per_recipient) & run.unknown == run.at_the_kill.in_flight
    sent = db.scalar("SELECT count(*) FROM delivery WHERE status = 'sent'")
    assert sent == AT_MOST_ONCE_RECIPIENTS - len(run.unknown)
    assert db.scalar("SELECT count(*) FROM delivery") == AT_MOST_ONCE_RECIPIENTS
    assert db.scalar("SELECT status FROM campaign") == "sent"
