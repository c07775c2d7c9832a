"""Campaign benchmark: a 100,000-recipient, three-message campaign vs one activity per recipient.

It starts the whole embedded stack with `herald dev` (Temporal dev server on SQLite + WAL, the
worker and the API: exactly what `make run` starts; outbox channel) on free ports in a temporary
data dir, writes --profiles profiles in bulk (email and phone, email + SMS consent subscribed, one
list) straight into Herald's database, and measures, in one run:

1. Naive design (the baseline). A benchmark-only workflow (bench/naive_campaign.py) sends one
   email to each of the first --naive-recipients profiles with the real per-message `deliver`
   activity (activities/delivery.py, run_kind "campaign"): one activity per recipient, at most
   --naive-concurrency in flight, run by a worker process of its own (`bench/campaigns.py
   --naive-worker`). Rate: sent / (first activity scheduled -> last activity completed), from the
   workflow's history.
2. Herald. One campaign, one path (the list), three messages: email (send time in the past: it
   goes at once), SMS, email; smart sending off (the third message would otherwise skip everyone
   the first reached); exit criteria Placed Order. The rows are inserted the way the API writes
   them and the snapshot is built by herald/campaigns/snapshot.py, then the "Campaign" workflow is
   started as the API starts it, on the worker `herald dev` runs (the router runs beside it).
   Send times have minute resolution, so messages 2 and 3 are set far enough ahead (estimated
   from --rate-guess) that message 1 has finished: as soon as message 1 is marked sent, Placed
   Order events for --convert-percent of the profiles are recorded through herald.ingest (time =
   now), before message 2 starts. The path workflow runs messages in order whatever their times.
   Printed: messages delivered per second over the ACTIVE sending time (per message: first
   send_page scheduled -> last send_page completed, from the path workflow's histories; idle
   waiting for send times is not counted), total wall time, the longest history of any run
   (campaign/<id> and every continue-as-new run of campaign/<id>/path/<path>, followed along the
   chain), peak VmRSS of the `herald worker` process (sampled every 0.5 s), and messages to
   converted profiles after their conversion (sent delivery rows and outbox rows of messages 2
   and 3 whose profile has a Placed Order at or before the send).

The recipients' timezone (and the campaign's) is picked so that the local time is early
afternoon, outside the default quiet hours (21:00-08:00) that would otherwise skip the SMS.

Targets: >= 5,000 messages/s, < 10,000 history events per run, zero messages after conversion.
It prints tables with targets marked met/MISSED and the ratio Herald / naive, and writes the raw
numbers to bench/results/campaigns-<timestamp>.json. Usage:

    make bench-campaigns   # or: .venv/bin/python bench/campaigns.py [--profiles 100000]
        [--naive-recipients 5000] [--naive-concurrency 100] [--convert-percent 5]
        [--rate-guess 2500] [--keep-log]
"""

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import naive_campaign
from common import (
    CpuMeter,
    Db,
    RssSampler,
    Stack,
    log,
    print_checks,
    rss_kb,
    run_on_stack,
    sqlite_epoch,
    stack_arguments,
    start_worker,
)
from temporalio.api.enums.v1 import EventType

from herald.campaigns import snapshot
from herald.campaigns.contract import CAMPAIGN_WORKFLOW, campaign_workflow_id
from herald.core.config import Settings
from herald.core.db import make_engine, session_scope
from herald.core.ids import new_id
from herald.core.search_attributes import attributes
from herald.core.temporal import connect
from herald.flows.graph import MessageContent
from herald.ingest.events import MetricDirectory, ingest
from models.campaigns import Campaign, CampaignMessage, CampaignPath
from models.events import EventIn
from models.lists import ListMembership, ProfileList
from models.profile import Consent, Profile
from models.types import utcnow

TARGET_RATE = 5_000
TARGET_HISTORY = 10_000
CONVERSION = "Placed Order"
NAIVE_QUEUE = "bench-naive-campaign"
CHUNK = 5_000  # rows per bulk insert transaction (short write locks for the router meanwhile)


def afternoon_zone(now: datetime) -> str:
    """A fixed-offset IANA zone where it is about 13:00 now (far from quiet hours)."""
    offset = (13 - now.hour + 12) % 24 - 12  # -12 .. +11 hours from UTC
    if offset == 0:
        return "Etc/GMT"
    # The Etc/GMT zones' signs are POSIX-style: Etc/GMT-3 is UTC+3.
    return f"Etc/GMT{-offset:+d}"


def wall(at: datetime, zone: str) -> str:
    """An instant as the campaign's "YYYY-MM-DDTHH:MM" wall time in `zone`."""
    return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M")


def next_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0) + timedelta(minutes=1)


# ---- setup -------------------------------------------------------------------------------------


def seed(engine, count: int, zone: str, tag: str) -> tuple[str, list[str], list[str]]:
    """`count` profiles (email, phone, timezone) with email + SMS consent, all on one list.

    Written in bulk, like tests/test_campaign_crash.py: the API would take minutes for 100,000
    and is not what is measured. Returns (list id, profile ids, emails), in profile id order.
    """
    now = utcnow()
    ids = [f"pr_b{tag}{i:07d}" for i in range(count)]
    emails = [f"b{tag}-{i}@bench.example.com" for i in range(count)]
    list_id = new_id("li")
    with engine.begin() as conn:
        conn.execute(
            ProfileList.__table__.insert(),
            [
                {
                    "id": list_id,
                    "name": f"Bench {tag}",
                    "description": "",
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
    for start in range(0, count, CHUNK):
        part = range(start, min(count, start + CHUNK))
        with engine.begin() as conn:
            conn.execute(
                Profile.__table__.insert(),
                [
                    {
                        "id": ids[i],
                        "email": emails[i],
                        "phone": f"+316{i:08d}",
                        "first_name": f"Sam{i % 1000}",
                        "timezone": zone,
                        "push_tokens": [],
                        "properties": {"tier": "gold" if i % 10 == 0 else "standard"},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in part
                ],
            )
            conn.execute(
                Consent.__table__.insert(),
                [
                    {
                        "profile_id": ids[i],
                        "channel": channel,
                        "status": "subscribed",
                        "source": "bench",
                        "updated_at": now,
                    }
                    for i in part
                    for channel in ("email", "sms")
                ],
            )
            conn.execute(
                ListMembership.__table__.insert(),
                [{"list_id": list_id, "profile_id": ids[i], "added_at": now} for i in part],
            )
    return list_id, ids, emails


def create_campaign(engine, tag: str, zone: str, list_id: str, times: list[datetime]):
    """The campaign's rows as the API writes them (status scheduled), and its snapshot, built
    by the same code the API's schedule endpoint uses."""

    campaign_id, path_id = new_id("cp"), new_id("pa")
    contents = [
        (
            "email",
            "The drop is live, {{ profile.first_name }}",
            "Hi {{ profile.first_name }}, "
            "the Aurora runner is out now: {{ profile.properties.tier }} members first.",
        ),
        ("sms", None, "Herald Shoes: the Aurora drop is live. Reply STOP to opt out."),
        ("email", "Last sizes left", "{{ profile.first_name }}, a few sizes are left."),
    ]
    with session_scope(engine) as session:
        session.add(
            Campaign(
                id=campaign_id,
                name=f"Bench drop {tag}",
                status="scheduled",
                timezone=zone,
                exit_metric=CONVERSION,
                scheduled_at=utcnow(),
            )
        )
        session.flush()
        session.add(
            CampaignPath(
                id=path_id, campaign_id=campaign_id, position=0, name="All", include_lists=[list_id]
            )
        )
        session.flush()
        for position, ((channel, subject, body), at) in enumerate(
            zip(contents, times, strict=True)
        ):
            content = {"body": body, "sender": "drops@shoes.example.com"}
            if subject:
                content["subject"] = subject
            session.add(
                CampaignMessage(
                    id=new_id("cm"),
                    campaign_id=campaign_id,
                    path_id=path_id,
                    position=position,
                    channel=channel,
                    content=content,
                    send_at_local=wall(at, zone),
                    smart_sending=False,
                    status="scheduled",
                )
            )
    with session_scope(engine) as session:
        return snapshot.snapshot(session, campaign_id, search_attributes=True)


# ---- histories ---------------------------------------------------------------------------------


async def run_chain(client, workflow_id: str, run_id: str) -> list[tuple[str, list]]:
    """Every run of a workflow from `run_id` on, following continue-as-new: [(run id, events)]."""
    runs = []
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events = list(history.events)
        runs.append((run_id, events))
        last = events[-1]
        run_id = ""
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return runs


def children_started(events: list) -> list[tuple[str, str]]:
    """(workflow id, first run id) of each child a workflow started."""
    out = []
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            execution = e.child_workflow_execution_started_event_attributes.workflow_execution
            out.append((execution.workflow_id, execution.run_id))
    return out


def activity_spans(runs: list[tuple[str, list]], activity: str, key) -> dict[str, dict]:
    """Per key (from the activity's decoded input): first scheduled and last completed time
    (Unix seconds), how many completed, and the seconds spent from scheduled to completed
    (`in_activity`; the rest of the span is workflow round trips between activities)."""

    scheduled: dict[tuple[str, int], tuple[str, float]] = {}
    spans: dict[str, dict] = {}
    for run_id, events in runs:
        for e in events:
            at = e.event_time.ToDatetime(tzinfo=UTC).timestamp()
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attrs = e.activity_task_scheduled_event_attributes
                if attrs.activity_type.name != activity:
                    continue
                name = key(json.loads(attrs.input.payloads[0].data))
                scheduled[(run_id, e.event_id)] = (name, at)
                span = spans.setdefault(
                    name, {"first": at, "last": at, "completed": 0, "in_activity": 0.0}
                )
                span["first"] = min(span["first"], at)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                found = scheduled.get(
                    (run_id, e.activity_task_completed_event_attributes.scheduled_event_id)
                )
                if found:
                    span = spans[found[0]]
                    span["last"] = max(span["last"], at)
                    span["completed"] += 1
                    span["in_activity"] += at - found[1]
    for span in spans.values():
        span["seconds"] = span["last"] - span["first"]
    return spans


# ---- 1. naive ----------------------------------------------------------------------------------


async def naive_phase(run: "Run", profile_ids: list[str]) -> dict:

    args = run.args
    campaign_id, message_id = new_id("cp"), new_id("cm")
    # A started campaign with exit criteria, so `deliver` runs its whole exit check per message.
    with session_scope(run.engine) as session:
        session.add(
            Campaign(
                id=campaign_id,
                name=f"Bench naive {run.tag}",
                status="sending",
                timezone=run.zone,
                exit_metric=CONVERSION,
                started_at=utcnow(),
            )
        )
    with start_worker(
        __file__, "--naive-worker", run.stack, NAIVE_QUEUE, "--database-url", run.database_url
    ) as worker:
        sampler = RssSampler({"naive worker": worker.pid})
        meter = CpuMeter({"naive worker": worker.pid, **run.stack.children()})
        started = time.time()
        handle = await run.client.start_workflow(
            naive_campaign.WORKFLOW_TYPE,
            naive_campaign.NaiveSend(
                campaign_id=campaign_id,
                message_id=message_id,
                channel="email",
                content=MessageContent(
                    subject="The drop is live, {{ profile.first_name }}",
                    body="Hi {{ profile.first_name }}, the Aurora runner is out now: "
                    "{{ profile.properties.tier }} members first.",
                    sender="drops@shoes.example.com",
                ),
                profile_ids=profile_ids,
                concurrency=args.naive_concurrency,
            ),
            id=f"bench-naive/{campaign_id}",
            task_queue=NAIVE_QUEUE,
        )
        outcomes = await asyncio.wait_for(handle.result(), timeout=3_600)
        wall_s = time.time() - started
        cpu = meter.stop()
        peak = await sampler.stop()
    runs = await run_chain(run.client, handle.id, handle.result_run_id or "")
    span = activity_spans(runs, "deliver", lambda _: "deliver").get("deliver", {})
    sent = run.db.scalar(
        "SELECT count(*) FROM delivery WHERE run_id=? AND status='sent'", campaign_id
    )
    return {
        "campaign_id": campaign_id,
        "recipients": len(profile_ids),
        "concurrency": args.naive_concurrency,
        "outcomes": outcomes,
        "sent": sent,
        "outbox": run.db.scalar(
            "SELECT count(*) FROM message_outbox o JOIN delivery d ON d.id = o.delivery_id "
            "WHERE d.run_id=?",
            campaign_id,
        ),
        "active_seconds": span.get("seconds", 0.0),
        "wall_seconds": wall_s,
        "history_events": [len(events) for _, events in runs],
        "worker_peak_mb": peak.get("naive worker", 0.0),
        "cpu_seconds": cpu,
    }


# ---- 2. Herald ---------------------------------------------------------------------------------


async def herald_phase(run: "Run", list_id: str, emails: list[str]) -> dict:

    args, db = run.args, run.db
    n = len(emails)
    # Message 1 at a time already passed (sent at once); 2 and 3 when 1 and 2 should be done.
    estimate = n / args.rate_guess
    now = utcnow()
    m2 = next_minute(now + timedelta(seconds=estimate + 30))
    m3 = next_minute(m2 + timedelta(seconds=estimate + 10))
    times = [now - timedelta(minutes=5), m2, m3]
    plan = create_campaign(run.engine, run.tag, run.zone, list_id, times)
    campaign_id = plan.settings.campaign_id
    messages = plan.paths[0].messages
    path_id = plan.paths[0].id
    log(
        f"2. Herald: campaign {campaign_id}: message 1 now, 2 at {m2:%H:%M} UTC, "
        f"3 at {m3:%H:%M} UTC"
    )
    children = run.stack.children()
    worker_pid = children["worker"]
    idle_rss = (rss_kb(worker_pid) or 0) / 1024
    sampler = RssSampler({"worker": worker_pid, "temporal": children["temporal"]})
    meter = CpuMeter(children)
    started = time.time()
    handle = await run.client.start_workflow(
        CAMPAIGN_WORKFLOW,
        plan,
        id=campaign_workflow_id(campaign_id),
        task_queue=Settings().task_queue,
        search_attributes=attributes(kind="campaign", campaign_id=campaign_id),
    )
    result_task = asyncio.create_task(handle.result())

    def status(message_id: str) -> str:
        return db.scalar("SELECT status FROM campaign_message WHERE id=?", message_id)

    def sent_so_far() -> int:
        return db.scalar(
            "SELECT count(*) FROM delivery WHERE run_id=? AND status='sent'", campaign_id
        )

    # Wait for message 1 to be done, then convert; report progress meanwhile.
    last_log = time.monotonic()
    while status(messages[0].id) != "sent":
        if result_task.done():
            result_task.result()  # raises what ended the workflow early
            raise RuntimeError("the campaign ended before message 1 was sent")
        if time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            log(f"  message 1: {sent_so_far()}/{n} sent")
        await asyncio.sleep(0.2)
    message1_done = time.time()
    converting = emails[:: max(1, round(100 / args.convert_percent))]
    log(f"  message 1 sent; recording {len(converting)} {CONVERSION} events")
    directory = MetricDirectory()
    for start in range(0, len(converting), 1_000):
        events = [
            EventIn(
                metric=CONVERSION,
                profile={"email": e},
                value=129.0,
                unique_id=f"order-{run.tag}-{e}",
            )
            for e in converting[start : start + 1_000]
        ]
        await asyncio.to_thread(ingest, run.engine, directory, events, "bench")
    conversions_done = time.time()
    message2_waiting = status(messages[1].id) == "scheduled"
    if not message2_waiting:
        log("  WARNING: message 2 started before the conversions were recorded")

    while not result_task.done():
        if time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            states = [status(m.id) for m in messages]
            log(f"  {sent_so_far()} sent; messages: {', '.join(states)}")
        await asyncio.sleep(0.5)
    outcome = result_task.result()
    wall_s = time.time() - started
    cpu = meter.stop()
    peak = await sampler.stop()
    log(f"2. Herald: campaign {outcome} in {wall_s:.0f} s; reading histories")

    campaign_runs = await run_chain(run.client, handle.id, handle.result_run_id or "")
    histories = {handle.id: [len(events) for _, events in campaign_runs]}
    spans: dict[str, dict] = {}
    for workflow_id, first_run in children_started(campaign_runs[0][1]):
        path_runs = await run_chain(run.client, workflow_id, first_run)
        histories[workflow_id] = [len(events) for _, events in path_runs]
        spans.update(activity_spans(path_runs, "send_page", lambda body: body["message_id"]))

    per_message = []
    for i, m in enumerate(messages):
        counts = dict(
            (f"{s}/{r}" if r else s, c)
            for s, r, c in db.rows(
                "SELECT status, reason, count(*) FROM delivery WHERE run_id=? AND step_id=? "
                "GROUP BY status, reason",
                campaign_id,
                m.id,
            )
        )
        first, last = db.rows(
            "SELECT min(sent_at), max(sent_at) FROM delivery WHERE run_id=? AND step_id=? "
            "AND status='sent'",
            campaign_id,
            m.id,
        )[0]
        span = spans.get(m.id, {})
        per_message.append(
            {
                "position": i + 1,
                "id": m.id,
                "channel": m.channel.value,
                "send_at_local": m.send_at_local,
                "audience": db.scalar(
                    "SELECT audience_size FROM campaign_message WHERE id=?", m.id
                ),
                "status": status(m.id),
                "deliveries": counts,
                "sent": counts.get("sent", 0),
                "pages": span.get("completed", 0),
                "active_seconds": span.get("seconds", 0.0),
                "in_pages_seconds": span.get("in_activity", 0.0),
                "first_page_at": span.get("first"),
                "last_page_done_at": span.get("last"),
                "sent_at_span_seconds": (sqlite_epoch(last) or 0) - (sqlite_epoch(first) or 0),
            }
        )

    later = [m.id for m in messages[1:]]
    marks = ",".join("?" * len(later))
    converted_before = (
        "EXISTS (SELECT 1 FROM event e JOIN metric mt ON mt.id = e.metric_id "
        "WHERE mt.name = ? AND e.profile_id = d.profile_id AND e.time <= {at})"
    )
    violations_delivery = db.scalar(
        f"SELECT count(*) FROM delivery d WHERE d.run_id=? AND d.step_id IN ({marks}) "
        f"AND d.status='sent' AND {converted_before.format(at='d.sent_at')}",
        campaign_id,
        *later,
        CONVERSION,
    )
    violations_outbox = db.scalar(
        "SELECT count(*) FROM message_outbox o JOIN delivery d ON d.id = o.delivery_id "
        f"WHERE d.run_id=? AND d.step_id IN ({marks}) "
        f"AND {converted_before.format(at='o.created_at')}",
        campaign_id,
        *later,
        CONVERSION,
    )
    return {
        "campaign_id": campaign_id,
        "path_id": path_id,
        "outcome": outcome,
        "profiles": n,
        "zone": run.zone,
        "messages": per_message,
        "sent": sum(m["sent"] for m in per_message),
        "outbox": db.scalar(
            "SELECT count(*) FROM message_outbox o JOIN delivery d ON d.id = o.delivery_id "
            "WHERE d.run_id=?",
            campaign_id,
        ),
        "active_seconds": sum(m["active_seconds"] for m in per_message),
        "wall_seconds": wall_s,
        "started_at": started,
        "message1_done_after_s": message1_done - started,
        "conversions": len(converting),
        "conversions_seconds": conversions_done - message1_done,
        "conversions_before_message2": message2_waiting,
        "exit_rows": db.scalar(
            "SELECT count(*) FROM campaign_exit WHERE campaign_id=?", campaign_id
        ),
        "violations_delivery": violations_delivery,
        "violations_outbox": violations_outbox,
        "histories": histories,
        "worker_idle_mb": idle_rss,
        "worker_peak_mb": peak.get("worker", 0.0),
        "temporal_peak_mb": peak.get("temporal", 0.0),
        "rss_samples": sampler.samples,
        "cpu_seconds": cpu,
    }


# ---- report ------------------------------------------------------------------------------------


def rate(result: dict) -> float:
    return result["sent"] / result["active_seconds"] if result["active_seconds"] else 0.0


def cpu_line(cpu: dict[str, float], sent: int) -> str:
    parts = [f"{name} {seconds:.1f} s" for name, seconds in cpu.items()]
    per = 1000 * sum(cpu.values()) / sent if sent else 0.0
    return f"CPU: {', '.join(parts)} ({per:.2f} ms per message sent, all processes)"


def report_naive(result: dict, profiles: int) -> None:
    n = result["recipients"]
    print(
        f"\n== 1. naive: one `deliver` activity per recipient, {n} recipients, "
        f"{result['concurrency']} in flight =="
    )
    print(f"outcomes {result['outcomes']}; {result['sent']} sent, {result['outbox']} in the outbox")
    print(
        f"active {result['active_seconds']:.1f} s (first activity scheduled -> last completed), "
        f"wall {result['wall_seconds']:.1f} s: {rate(result):,.0f} messages/s"
    )
    events = sum(result["history_events"])
    print(
        f"history: {result['history_events']} events (~{events * profiles // n:,} in one run for "
        f"{profiles:,} recipients; Temporal's hard limit is 51,200); naive worker peak RSS "
        f"{result['worker_peak_mb']:.0f} MB"
    )
    print(cpu_line(result["cpu_seconds"], result["sent"]))


def report_herald(result: dict) -> list[tuple[str, bool]]:
    n = result["profiles"]
    print(
        f"\n== 2. Herald: {n} profiles, one path, email / SMS / email, exit on {CONVERSION}, "
        f"{result['conversions']} converting after message 1 (zone {result['zone']}) =="
    )
    print(
        f"{'msg':>3} {'channel':7} {'local send time':16} {'audience':>8} {'sent':>8} "
        f"{'exited':>7} {'other':>6} {'pages':>5} {'active s':>8} {'in pages':>8} {'msgs/s':>8}"
    )
    for m in result["messages"]:
        exited = m["deliveries"].get("skipped/exited", 0)
        other = sum(m["deliveries"].values()) - m["sent"] - exited
        per_s = m["sent"] / m["active_seconds"] if m["active_seconds"] else 0.0
        print(
            f"{m['position']:3d} {m['channel']:7} {m['send_at_local']:16} {m['audience'] or 0:8d} "
            f"{m['sent']:8d} {exited:7d} {other:6d} {m['pages']:5d} {m['active_seconds']:8.1f} "
            f"{m['in_pages_seconds']:8.1f} {per_s:8,.0f}"
        )
    herald_rate = rate(result)
    print(
        "(active: first page scheduled -> last page done; in pages: the send_page activities "
        "themselves, queueing included; the rest: the path workflow between pages)"
    )
    print(
        f"total: {result['sent']} sent ({result['outbox']} in the outbox) in "
        f"{result['active_seconds']:.1f} s of active sending: {herald_rate:,.0f} messages/s"
    )
    print(
        f"wall time {result['wall_seconds']:.0f} s from start to the campaign's end "
        f"({result['outcome']}), idle waits for the send times included; message 1 done after "
        f"{result['message1_done_after_s']:.1f} s"
    )
    print(
        f"conversions: {result['conversions']} {CONVERSION} events recorded in "
        f"{result['conversions_seconds']:.1f} s, before message 2 started: "
        f"{'yes' if result['conversions_before_message2'] else 'NO'}; "
        f"campaign_exit rows (router): {result['exit_rows']}"
    )
    longest_run = max(max(v) for v in result["histories"].values())
    for workflow_id, runs in result["histories"].items():
        print(f"history {workflow_id}: {len(runs)} run(s), events per run {runs}")
    print(
        f"worker RSS: {result['worker_idle_mb']:.0f} MB idle before, peak "
        f"{result['worker_peak_mb']:.0f} MB ({result['rss_samples']} samples, every 0.5 s); "
        f"temporal peak {result['temporal_peak_mb']:.0f} MB"
    )
    print(cpu_line(result["cpu_seconds"], result["sent"]))
    violations = result["violations_delivery"] + result["violations_outbox"]
    expected_exits = all(
        m["deliveries"].get("skipped/exited", 0) == result["conversions"]
        for m in result["messages"][1:]
    )
    return [
        (f"Herald >= {TARGET_RATE:,} messages/s ({herald_rate:,.0f})", herald_rate >= TARGET_RATE),
        (
            f"history < {TARGET_HISTORY:,} events per run (longest {longest_run:,})",
            longest_run < TARGET_HISTORY,
        ),
        (
            f"zero messages to converted profiles after their conversion ("
            f"{result['violations_delivery']} delivery rows, {result['violations_outbox']} "
            "outbox rows)",
            violations == 0,
        ),
        (
            f"messages 2 and 3 each skipped all {result['conversions']} converted profiles "
            "(reason exited)",
            expected_exits,
        ),
        (
            f"message 1 reached all {n}; campaign ended 'sent'",
            result["messages"][0]["sent"] == n and result["outcome"] == "sent",
        ),
    ]


# ---- main --------------------------------------------------------------------------------------


class Run:
    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:

        self.stack, self.args = stack, args
        self.tag = uuid.uuid4().hex[:6]
        self.database_url = f"sqlite:///{stack.sqlite_path}"
        self.engine = make_engine(self.database_url)
        self.db = Db(stack.sqlite_path)
        self.zone = afternoon_zone(datetime.now(UTC))
        self.client = None


async def measure(stack: Stack, args: argparse.Namespace, out: dict) -> None:

    run = Run(stack, args)
    run.client = await connect(Settings(temporal_address=stack.temporal_address))
    out["zone"] = run.zone
    log(f"setup: {args.profiles} profiles with email + SMS consent on one list (zone {run.zone})")
    t0 = time.monotonic()
    list_id, ids, emails = await asyncio.to_thread(
        seed, run.engine, args.profiles, run.zone, run.tag
    )
    out["seed_seconds"] = time.monotonic() - t0
    log(f"setup: done in {out['seed_seconds']:.1f} s")

    log(f"1. naive: {args.naive_recipients} recipients, one activity each")
    out["naive"] = await naive_phase(run, ids[: args.naive_recipients])
    report_naive(out["naive"], args.profiles)
    sys.stdout.flush()

    log(f"2. Herald: {args.profiles} recipients, three messages")
    out["herald"] = await herald_phase(run, list_id, emails)
    checks = report_herald(out["herald"])
    ratio = rate(out["herald"]) / rate(out["naive"]) if rate(out["naive"]) else 0.0
    out["ratio"] = ratio
    print(
        f"\n== Herald / naive: {rate(out['herald']):,.0f} / {rate(out['naive']):,.0f} "
        f"messages/s = {ratio:.1f}x =="
    )
    print_checks(checks)
    out["checks"] = dict(checks)
    run.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000, help="campaign recipients")
    parser.add_argument(
        "--naive-recipients", type=int, default=5_000, help="the naive design's slice"
    )
    parser.add_argument(
        "--naive-concurrency", type=int, default=100, help="naive activities in flight"
    )
    parser.add_argument(
        "--convert-percent", type=float, default=5.0, help="profiles ordering after message 1"
    )
    parser.add_argument(
        "--rate-guess",
        type=float,
        default=2_500,
        help="messages/s assumed when setting messages 2 and 3 after message 1",
    )
    stack_arguments(parser, "--naive-worker", "--database-url")
    args = parser.parse_args()

    if args.naive_worker:
        asyncio.run(naive_campaign.run_worker(args.address, args.task_queue, args.database_url))
        return

    args.naive_recipients = min(args.naive_recipients, args.profiles)
    print(
        f"cores: {os.cpu_count()}  profiles: {args.profiles}  naive recipients: "
        f"{args.naive_recipients}  naive concurrency: {args.naive_concurrency}  "
        f"converting: {args.convert_percent:g} %",
        flush=True,
    )
    run_on_stack("campaigns", measure, args, timed=True)


if __name__ == "__main__":
    main()
