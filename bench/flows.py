"""Flows benchmark: enrollment life cycle vs a bare Temporal baseline, exit latency, worker memory.

It starts the whole embedded stack with `herald dev` (Temporal dev server on SQLite + WAL, the
worker and the API: exactly what `make run` starts) on free ports in a temporary data dir, creates
one live flow through the API

    trigger "Started Checkout" -> m1 email (smart sending off) -> d1 wait 1 day -> m2 email
    exit on "Placed Order"

and measures, in one run:

1. Enrollment throughput. N profiles (email consent subscribed) each get a Started Checkout
   event (batches of --batch-size over --concurrency connections); clock from the first POST
   until the last first message is in the outbox; then N Placed Order events, clock from the
   first POST until the last enrollment workflow closed (Temporal's close time). The rate is N
   over the sum of both spans. The baseline, on the same dev server in the same run, is a bare
   workflow (bench/baseline.py: start, one activity writing one SQLite row, wait for a signal)
   whose worker runs in its own process like Herald's: N starts with the same concurrency, the
   clock stops when the last activity wrote its row; then N signals, until the last one closed.
   It runs before and after Herald and the ratio uses the mean of both. Target: Herald >= 0.8x
   the baseline. Also printed: CPU per enrollment of every process (and `other`: the rest of the
   machine, i.e. how disturbed the run was), a CPU-normalised ratio that noise hardly moves,
   history events per workflow, and what Herald's worker did according to its Temporal SDK
   metrics (workflow task latencies, sticky cache misses, schedule-to-start).
2. Exit latency. With --sleeping enrollments waiting in the delay, --samples Placed Order events
   are sent one at a time (POST /v1/events); per event: 202 received -> the enrollment row
   leaves 'running' (the SQLite file polled read-only every 5 ms), plus -> the router claimed the
   event and -> Temporal's close time of the workflow (describe). Target: p99 < 250 ms.
3. Worker memory. Enrollments are added until --memory-enrollments sleep in the delay (progress
   on stderr; about ten minutes for 10,000 on 2 cores); VmRSS of the `herald worker` process
   (a child of `herald dev`) at rest, and its peak during the ramp. Target: < 400 MB at rest.
   0 skips it.

It prints one table per measurement with targets marked met/MISSED and writes the raw numbers to
bench/results/flows-<timestamp>.json. Usage:

    make bench-flows      # or: .venv/bin/python bench/flows.py [--enrollments 500]
        [--sleeping 1000] [--samples 200] [--memory-enrollments 10000] [--concurrency 8]
        [--batch-size 100] [--keep-log]

The database is read directly (sqlite3, read-only) to see progress: cheaper than polling the API,
and the API would compete for the same CPU as what is measured. On failure (a stuck enrollment,
a refused request) the stack's log is kept and its path printed.
"""

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import time
import uuid
from pathlib import Path

from common import (
    Connection,
    CpuMeter,
    Db,
    Stack,
    log,
    percentile,
    poll,
    print_checks,
    run_on_stack,
    sqlite_epoch,
    stack_arguments,
    start_worker,
)

TARGET_RATIO = 0.8
TARGET_EXIT_P99_MS = 250
TARGET_WORKER_RSS_MB = 400
BASELINE_QUEUE = "bench-baseline"

TRIGGER, CONVERSION = "Started Checkout", "Placed Order"


def flow_body(name: str) -> dict:
    def message(step_id: str, subject: str, nxt: str | None) -> dict:
        return {
            "id": step_id,
            "type": "message",
            "channel": "email",
            "smart_sending": False,
            "content": {"subject": subject, "body": "hi {{ profile.email }}"},
            "next": nxt,
        }

    return {
        "name": name,
        "status": "live",
        "trigger": {"type": "metric", "metric": TRIGGER},
        "exit_metric": CONVERSION,
        "steps": [
            message("m1", "You left something behind", "d1"),
            {"id": "d1", "type": "time_delay", "amount": 1, "unit": "days", "next": "m2"},
            message("m2", "Still thinking about it?", None),
        ],
    }


def sdk_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the worker did in between, from its SDK metrics."""

    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean_ms(name: str) -> float:
        count = d(f"{name}_count")
        return d(f"{name}_sum") / count if count else 0.0

    return {
        "workflow_tasks": d("temporal_workflow_task_execution_latency_count"),
        "workflow_task_mean_ms": mean_ms("temporal_workflow_task_execution_latency"),
        "replays": d("temporal_workflow_task_replay_latency_count"),
        "replay_mean_ms": mean_ms("temporal_workflow_task_replay_latency"),
        "sticky_cache_misses": d("temporal_sticky_cache_miss"),
        "forced_evictions": d("temporal_sticky_cache_total_forced_eviction"),
        "workflow_task_schedule_to_start_mean_ms": mean_ms(
            "temporal_workflow_task_schedule_to_start_latency"
        ),
        "activity_schedule_to_start_mean_ms": mean_ms(
            "temporal_activity_schedule_to_start_latency"
        ),
        "local_activities": d("temporal_local_activity_execution_latency_count"),
        "cache_size": after.get("temporal_sticky_cache_size", 0.0),
    }


def sdk_line(sdk: dict[str, float]) -> str:
    return (
        f"{sdk['workflow_tasks']:.0f} workflow tasks ({sdk['workflow_task_mean_ms']:.1f} ms), "
        f"{sdk['sticky_cache_misses']:.0f} cache misses, "
        f"{sdk['forced_evictions']:.0f} forced evictions, "
        f"schedule-to-start: workflow task {sdk['workflow_task_schedule_to_start_mean_ms']:.0f} "
        f"ms, activity {sdk['activity_schedule_to_start_mean_ms']:.0f} ms (means)"
    )


class Run:
    """The stack, its keys, the flow and helpers shared by the phases."""

    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.tag = uuid.uuid4().hex[:8]
        self.db = Db(stack.sqlite_path)
        self.flow_id = ""
        self.client = None  # temporalio Client, connected in start()
        self.history_lengths: dict[str, int] = {}  # workflow id -> events, once closed
        # 5xx answers (retried, as a client SDK would): [(when, request, status, body start)].
        self.server_errors: list[tuple[str, str, int, str]] = []

    async def start(self) -> None:
        from temporalio.client import Client

        self.client = await Client.connect(self.stack.temporal_address)
        conn = self.private()
        status, body = await conn.json("POST", "/v1/flows", flow_body(f"bench {self.tag}"))
        conn.close()
        if status != 201:
            raise SystemExit(f"creating the flow failed: {status} {body}")
        self.flow_id = body["id"]

    def private(self) -> Connection:
        return self.stack.connection("private_key")

    def ingest(self) -> Connection:
        return self.stack.connection("write_key")

    async def call(self, conn: Connection, method: str, path: str, body: bytes | None):
        """A request retried on 5xx and dropped connections (every write here is idempotent:
        upserts by email, consent, events by unique_id); each 5xx is recorded as a finding."""
        for attempt in range(6):
            try:
                status, raw = await conn.request(method, path, body)
            except (OSError, asyncio.IncompleteReadError) as exc:
                conn.close()
                conn.writer = None
                status, raw = 599, repr(exc).encode()
            if status < 500:
                return status, raw
            self.server_errors.append(
                (time.strftime("%H:%M:%S"), f"{method} {path}", status, raw[:200].decode("replace"))
            )
            log(f"  {method} {path} -> {status} (attempt {attempt + 1}), retrying")
            await asyncio.sleep(2**attempt)
        raise RuntimeError(f"{method} {path}: {status} {raw[:300]!r}")

    async def call_json(self, conn: Connection, method: str, path: str, body: object):
        status, raw = await self.call(conn, method, path, json.dumps(body).encode())
        return status, json.loads(raw) if raw else None

    # ---- setup -------------------------------------------------------------------------------

    async def profiles(self, phase: str, count: int) -> list[tuple[str, str]]:
        """`count` new profiles with email consent subscribed: [(email, profile id)]."""
        emails = [f"{phase}-{self.tag}-{i}@bench.example.com" for i in range(count)]
        out: dict[int, str] = {}
        todo = iter(range(count))
        last_log = time.monotonic()

        async def worker() -> None:
            nonlocal last_log
            conn = self.private()
            try:
                for i in todo:
                    status, body = await self.call_json(
                        conn, "POST", "/v1/profiles/upsert", {"email": emails[i]}
                    )
                    if status >= 300:
                        raise RuntimeError(f"upsert {emails[i]}: {status} {body}")
                    status, body2 = await self.call_json(
                        conn,
                        "PUT",
                        f"/v1/profiles/{body['id']}/consent/email",
                        {"status": "subscribed"},
                    )
                    if status >= 300:
                        raise RuntimeError(f"consent {body['id']}: {status} {body2}")
                    out[i] = body["id"]
                    if count >= 2_000 and time.monotonic() - last_log > 10:
                        last_log = time.monotonic()
                        log(f"  {phase}: {len(out)}/{count} profiles with consent")
            finally:
                conn.close()

        await asyncio.gather(*(worker() for _ in range(16)))
        return [(emails[i], out[i]) for i in range(count)]

    async def post_events(self, metric: str, emails: list[str], prefix: str) -> float:
        """One `metric` event per email, in batches; returns the wall time of the first POST."""
        size = self.args.batch_size
        batches = [
            json.dumps(
                {
                    "events": [
                        {
                            "metric": metric,
                            "profile": {"email": e},
                            "unique_id": f"{prefix}-{self.tag}-{start + j}",
                        }
                        for j, e in enumerate(emails[start : start + size])
                    ]
                }
            ).encode()
            for start in range(0, len(emails), size)
        ]
        todo = iter(batches)
        first = time.time()

        async def worker() -> None:
            conn = self.ingest()
            try:
                for body in todo:
                    status, raw = await self.call(conn, "POST", "/v1/events/batch", body)
                    result = json.loads(raw)
                    # After a retried 5xx, what the first attempt stored comes back as duplicates.
                    stored = result.get("accepted", 0) + result.get("duplicates", 0)
                    if status != 202 or stored != body.count(b'"metric"'):
                        raise RuntimeError(f"batch refused: {status} {raw[:300]!r}")
            finally:
                conn.close()

        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        return first

    # ---- observation -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Progress of this flow, read from Herald's database."""
        fid = self.flow_id
        return {
            "enrolled": self.db.scalar("SELECT count(*) FROM flow_enrollment WHERE flow_id=?", fid),
            "running": self.db.scalar(
                "SELECT count(*) FROM flow_enrollment WHERE flow_id=? AND status='running'", fid
            ),
            "closed": self.db.scalar(
                "SELECT count(*) FROM flow_enrollment WHERE flow_id=? AND status!='running'", fid
            ),
            "m1": self.db.scalar(
                "SELECT count(*) FROM delivery WHERE run_id=? AND step_id='m1'", fid
            ),
            "m1_sent": self.db.scalar(
                "SELECT count(*) FROM delivery WHERE run_id=? AND step_id='m1' AND status='sent'",
                fid,
            ),
            # Written by the local activity that runs right before the delay's timer starts.
            "sleeping": self.db.scalar(
                "SELECT count(*) FROM enrollment_step s JOIN flow_enrollment e "
                "ON e.workflow_id = s.workflow_id WHERE s.flow_id=? AND s.step_id='m1' "
                "AND s.outcome='processed' AND e.status='running'",
                fid,
            ),
            "pending_routing": self.db.scalar(
                "SELECT count(*) FROM routing_outbox WHERE routed_at IS NULL"
            ),
        }

    def summary(self) -> dict:
        fid = self.flow_id
        return {
            "enrollments": {
                f"{s}/{r}": n
                for s, r, n in self.db.rows(
                    "SELECT status, coalesce(exit_reason, '-'), count(*) FROM flow_enrollment "
                    "WHERE flow_id=? GROUP BY 1, 2",
                    fid,
                )
            },
            "deliveries": {
                f"{step}/{s}/{r}": n
                for step, s, r, n in self.db.rows(
                    "SELECT step_id, status, coalesce(reason, '-'), count(*) FROM delivery "
                    "WHERE run_id=? GROUP BY 1, 2, 3",
                    fid,
                )
            },
        }

    async def wait_for(self, what: str, done, stall_seconds: float = 120.0, every=0.02) -> dict:
        """Polls `counts()` until `done(counts)`; gives up when nothing moved for a while."""
        last, moved, next_log = None, time.monotonic(), time.monotonic() + 10
        while True:
            self.stack.check_alive()
            counts = self.counts()
            if done(counts):
                return counts
            now = time.monotonic()
            if counts != last:
                last, moved = counts, now
            elif now - moved > stall_seconds:
                raise RuntimeError(
                    f"stuck waiting for {what}: {counts}; {json.dumps(self.summary())}"
                )
            if now >= next_log:
                next_log = now + 10
                rss = self.stack.rss_mb().get("worker", 0)
                log(f"  waiting for {what}: {counts} worker {rss:.0f} MB")
            await asyncio.sleep(every)

    async def close_times(self, workflow_ids: list[str]) -> dict[str, float]:
        """Temporal's close time of each workflow (Unix seconds); open ones are left out."""
        limit = asyncio.Semaphore(32)
        out: dict[str, float] = {}

        async def one(wid: str) -> None:
            async with limit:
                desc = await self.client.get_workflow_handle(wid).describe()
            if desc.close_time is not None:
                out[wid] = desc.close_time.timestamp()
                self.history_lengths[wid] = desc.history_length

        await asyncio.gather(*(one(w) for w in workflow_ids))
        return out

    async def all_closed(self, workflow_ids: list[str]) -> dict[str, float]:
        """Close times of all of them, waiting for the last few (a row is written just before
        its workflow completes)."""
        closed = await self.close_times(workflow_ids)
        deadline = time.monotonic() + 60
        while len(closed) < len(workflow_ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            closed.update(await self.close_times([w for w in workflow_ids if w not in closed]))
        return closed


# ---- 1. enrollment throughput ------------------------------------------------------------------


async def baseline(run: Run, scratch: Path, worker_pid: int, label: str) -> dict:
    n, concurrency = run.args.enrollments, run.args.concurrency
    client = run.client
    prefix = f"bench-baseline-{run.tag}-{label}-"
    ids = [f"{prefix}{i}" for i in range(n)]
    db = sqlite3.connect(str(scratch), timeout=30)

    async def each(fn) -> None:
        todo = iter(ids)

        async def worker() -> None:
            for wid in todo:
                await fn(wid)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def start(wid: str) -> None:
        await client.start_workflow("BenchBaseline", id=wid, task_queue=BASELINE_QUEUE)

    async def signal(wid: str) -> None:
        await client.get_workflow_handle(wid).signal("done")

    meter = CpuMeter(run.stack.children(), {"baseline worker": worker_pid}, other=True)
    t0 = time.time()
    await each(start)
    touches = "FROM touch WHERE workflow_id LIKE ?", (prefix + "%",)

    def touched_all() -> bool:
        return db.execute(f"SELECT count(*) {touches[0]}", touches[1]).fetchone()[0] >= n

    await poll(touched_all, 0.02)
    touched = db.execute(f"SELECT max(at) {touches[0]}", touches[1]).fetchone()[0]
    db.close()
    # The activity's result still has to reach its workflow; let that settle before signalling,
    # as Herald's phase does (its clock stops at the send, before the workflow sees the result).
    await asyncio.sleep(1)
    t1 = time.time()
    await each(signal)
    query = (
        "WorkflowType='BenchBaseline' AND ExecutionStatus='Completed' "
        f"AND WorkflowId STARTS_WITH '{prefix}'"
    )

    async def all_closed() -> bool:
        return (await client.count_workflows(query)).count >= n

    await poll(all_closed, 0.1)
    cpu = meter.stop()
    closed = await run.all_closed(ids)
    return {
        "n": n,
        "label": label,
        "start_to_first_effect_s": touched - t0,
        "conversion_to_closed_s": max(closed.values()) - t1,
        "cpu_s": cpu,
        "history_events": statistics.mean(run.history_lengths[w] for w in ids),
    }


async def herald_lifecycle(run: Run) -> dict:
    n = run.args.enrollments
    log(f"1. Herald: {n} profiles with consent")
    people = await run.profiles("life", n)
    emails = [e for e, _ in people]
    log(f"1. Herald: {n} {TRIGGER} events")
    meter = CpuMeter(run.stack.children(), other=True)
    metrics = run.stack.worker_metrics()
    t0 = await run.post_events(TRIGGER, emails, "sc")
    await run.wait_for(f"{n} first messages", lambda c: c["m1"] >= n)
    sent_at = sqlite_epoch(
        run.db.scalar(
            "SELECT max(o.created_at) FROM message_outbox o JOIN delivery d "
            "ON d.id = o.delivery_id WHERE d.run_id=? AND d.step_id='m1'",
            run.flow_id,
        )
    )
    # Comparable to the baseline: the conversion arrives once every enrollment sleeps.
    await run.wait_for(f"{n} sleeping", lambda c: c["sleeping"] >= n)
    await asyncio.sleep(1)
    log(f"1. Herald: {n} {CONVERSION} events")
    t1 = await run.post_events(CONVERSION, emails, "po")
    await run.wait_for(f"{n} exits", lambda c: c["closed"] >= n)
    cpu = meter.stop()
    sdk = sdk_delta(metrics, run.stack.worker_metrics())
    ids = [r[0] for r in run.db.rows("SELECT workflow_id FROM flow_enrollment")]
    closed = await run.all_closed(ids)
    return {
        "n": n,
        "start_to_first_effect_s": sent_at - t0,
        "conversion_to_closed_s": max(closed.values()) - t1,
        "cpu_s": cpu,
        "history_events": statistics.mean(run.history_lengths[w] for w in ids),
        "worker_sdk": sdk,
        **run.summary(),
    }


def rate(result: dict) -> float:
    return result["n"] / (result["start_to_first_effect_s"] + result["conversion_to_closed_s"])


def cpu_ms(result: dict) -> float:
    """CPU per enrollment of the processes under test (all but `other`), in ms."""
    return sum(v for k, v in result["cpu_s"].items() if k != "other") * 1000 / result["n"]


def baseline_rate(bases: list[dict]) -> float:
    return statistics.mean(rate(b) for b in bases)


def report_lifecycle(bases: list[dict], herald: dict, args) -> list[tuple[str, bool]]:
    n = herald["n"]
    print(f"\n== 1. enrollment life cycle: {n} enrollments, concurrency {args.concurrency} ==")
    print(f"{'':26} {'start->1st msg s':>17} {'conversion->closed s':>21} {'total s':>8} {'/s':>7}")
    runs = [(f"baseline ({b['label']})", b) for b in bases[:1]]
    runs += [("Herald flow", herald)] + [(f"baseline ({b['label']})", b) for b in bases[1:]]
    for name, r in runs:
        a, b = r["start_to_first_effect_s"], r["conversion_to_closed_s"]
        print(f"{name:26} {a:17.2f} {b:21.2f} {a + b:8.2f} {rate(r):7.1f}")
    ratio = rate(herald) / baseline_rate(bases)
    spread = ", ".join(f"{rate(herald) / rate(b):.2f}x vs {b['label']}" for b in bases)
    print(f"ratio Herald / mean baseline: {ratio:.2f}x ({spread})")
    print(
        "CPU ms per enrollment, by process (2 cores; `other` is the rest of the machine, "
        "i.e. noise):"
    )
    for name, r in runs:
        parts = "  ".join(f"{k} {v * 1000 / n:.1f}" for k, v in sorted(r["cpu_s"].items()))
        print(f"  {name:24} total {cpu_ms(r):6.1f}   {parts}")
    cpu_ratio = statistics.mean(cpu_ms(b) for b in bases) / cpu_ms(herald)
    print(
        f"CPU-normalised ratio (baseline CPU / Herald CPU per enrollment, robust to noise): "
        f"{cpu_ratio:.2f}x"
    )
    print(
        "history events per workflow: "
        + ", ".join(f"{name} {r['history_events']:.1f}" for name, r in runs)
    )
    print(f"Herald worker: {sdk_line(herald['worker_sdk'])}")
    print(f"enrollments: {herald['enrollments']}  deliveries: {herald['deliveries']}")
    clean = herald["enrollments"] == {"exited/converted": n} and herald["deliveries"] == {
        "m1/sent/-": n
    }
    return [
        (f"Herald >= {TARGET_RATIO}x baseline ({ratio:.2f}x)", ratio >= TARGET_RATIO),
        (f"all {n}: one message sent, exited 'converted', no second message", clean),
    ]


# ---- 2. exit latency ---------------------------------------------------------------------------


async def exit_latency(run: Run) -> dict:
    sleeping, samples = run.args.sleeping, run.args.samples
    before = run.counts()["sleeping"]
    need = max(0, sleeping - before)
    log(f"2. exit latency: {need} more sleeping enrollments (to {sleeping})")
    people = await run.profiles("lat", need)
    await run.post_events(TRIGGER, [e for e, _ in people], "sc-lat")
    await run.wait_for(f"{sleeping} sleeping", lambda c: c["sleeping"] >= sleeping)
    await run.wait_for("empty routing outbox", lambda c: c["pending_routing"] == 0)
    await asyncio.sleep(2)
    workflow_of = dict(
        run.db.rows(
            "SELECT profile_id, workflow_id FROM flow_enrollment WHERE flow_id=? "
            "AND status='running'",
            run.flow_id,
        )
    )
    picked = [(e, workflow_of[p]) for e, p in people[:samples]]
    log(f"2. exit latency: {len(picked)} {CONVERSION} events, one at a time")
    metrics = run.stack.worker_metrics()
    conn = run.ingest()
    row_ms, sent_wall, event_ids, timeouts = [], {}, {}, 0
    try:
        for i, (email, wid) in enumerate(picked):
            body = {"metric": CONVERSION, "profile": {"email": email}, "unique_id": f"lat-{i}"}
            status, answer = await run.call_json(conn, "POST", "/v1/events", body)
            accepted, accepted_wall = time.perf_counter(), time.time()
            if status != 202:
                raise RuntimeError(f"event refused: {status} {answer}")
            sent_wall[wid], event_ids[wid] = accepted_wall, answer["event_id"]
            while True:
                state = run.db.scalar("SELECT status FROM flow_enrollment WHERE workflow_id=?", wid)
                if state != "running":
                    row_ms.append((time.perf_counter() - accepted) * 1000)
                    break
                if time.perf_counter() - accepted > 30:
                    timeouts += 1
                    break
                await asyncio.sleep(0.005)
    finally:
        conn.close()
    sdk = sdk_delta(metrics, run.stack.worker_metrics())
    closed = await run.all_closed(list(sent_wall))
    temporal_ms = [(closed[w] - sent_wall[w]) * 1000 for w in sent_wall if w in closed]
    routed_ms = []
    for wid, event_id in event_ids.items():
        routed = run.db.scalar("SELECT routed_at FROM routing_outbox WHERE event_id=?", event_id)
        if routed:
            routed_ms.append((sqlite_epoch(routed) - sent_wall[wid]) * 1000)
    return {
        "sleeping": sleeping,
        "samples": len(picked),
        "timeouts": timeouts,
        "routed_ms": routed_ms,
        "row_closed_ms": row_ms,
        "temporal_closed_ms": temporal_ms,
        "worker_sdk": sdk,
    }


def report_latency(result: dict) -> list[tuple[str, bool]]:
    print(
        f"\n== 2. exit latency: {result['samples']} {CONVERSION} events one at a time, "
        f"{result['sleeping']} enrollments sleeping =="
    )
    print(f"{'202 accepted ->':36} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    rows = (
        ("router claimed the event", result["routed_ms"]),
        ("enrollment row leaves 'running'", result["row_closed_ms"]),
        ("workflow closed (Temporal)", result["temporal_closed_ms"]),
    )
    for name, values in rows:
        if values:
            print(
                f"{name:36} {len(values):5d} {statistics.median(values):8.1f} "
                f"{percentile(values, 0.99):8.1f} {max(values):8.1f}"
            )
    print(f"Herald worker: {sdk_line(result['worker_sdk'])}")
    p99 = percentile(result["row_closed_ms"], 0.99) if result["row_closed_ms"] else float("inf")
    return [
        (f"p99 < {TARGET_EXIT_P99_MS} ms ({p99:.0f} ms)", p99 < TARGET_EXIT_P99_MS),
        ("every sample closed within 30 s", result["timeouts"] == 0),
    ]


# ---- 3. worker memory --------------------------------------------------------------------------


async def memory(run: Run, rss_log: list[dict]) -> dict:
    target = run.args.memory_enrollments
    before = run.counts()["sleeping"]
    need = max(0, target - before)
    log(f"3. memory: {need} more sleeping enrollments (to {target}); this takes a while")
    started = time.monotonic()
    people = await run.profiles("mem", need)
    profiles_s = time.monotonic() - started
    peak = 0.0
    emails = [e for e, _ in people]
    progress = {"m1": -1, "at": time.monotonic(), "longest_pause": 0.0}

    def done(counts: dict) -> bool:
        nonlocal peak
        peak = max(peak, run.stack.rss_mb().get("worker", 0))
        now = time.monotonic()
        if counts["m1"] != progress["m1"]:
            progress.update(m1=counts["m1"], at=now)
        elif counts["enrolled"] > counts["m1"]:
            # Enrollments wait for their first message, and none was sent since `at`.
            progress["longest_pause"] = max(progress["longest_pause"], now - progress["at"])
        return counts["sleeping"] >= target

    metrics = run.stack.worker_metrics()
    t0 = time.monotonic()
    # In slices, so progress shows and the router's batches stay like real traffic.
    for start in range(0, len(emails), 1_000):
        await run.post_events(TRIGGER, emails[start : start + 1_000], f"sc-mem{start}")
        done(run.counts())
    posted_s = time.monotonic() - t0

    await run.wait_for(f"{target} sleeping", done, every=0.5)
    ramp_s = time.monotonic() - t0
    sdk = sdk_delta(metrics, run.stack.worker_metrics())
    samples = []
    for _ in range(5):
        await asyncio.sleep(1)
        samples.append(run.stack.rss_mb())
    rss_log.append({"sleeping": run.counts()["sleeping"], "after": "memory", **samples[-1]})
    return {
        "sleeping": run.counts()["sleeping"],
        "new_enrollments": need,
        "profiles_seconds": profiles_s,
        "events_posted_seconds": posted_s,
        "enrol_to_sleeping_seconds": ramp_s,
        "worker_peak_mb": max(peak, *(s.get("worker", 0) for s in samples)),
        "worker_rest_mb": samples[-1].get("worker", 0),
        "rss_at_rest": samples[-1],
        "worker_sdk": sdk,
        "longest_delivery_pause_s": progress["longest_pause"],
    }


def report_memory(result: dict, rss_log: list[dict]) -> list[tuple[str, bool]]:
    print(f"\n== 3. worker memory: {result['sleeping']} sleeping enrollments ==")
    print(f"{'when':34} {'sleeping':>8} {'worker MB':>10} {'temporal MB':>12} {'api MB':>8}")
    for row in rss_log:
        print(
            f"{row['after']:34} {row['sleeping']:8d} {row.get('worker', 0):10.0f} "
            f"{row.get('temporal', 0):12.0f} {row.get('api', 0):8.0f}"
        )
    n, ramp = result["new_enrollments"], result["enrol_to_sleeping_seconds"]
    print(
        f"ramp: {n} profiles with consent in {result['profiles_seconds']:.0f} s; "
        f"{n} enrollments from first event to all sleeping in {ramp:.0f} s "
        f"({n / ramp if ramp else 0:.1f}/s); worker peak {result['worker_peak_mb']:.0f} MB"
    )
    print(f"Herald worker during the ramp: {sdk_line(result['worker_sdk'])}")
    print(
        "longest pause in first messages while enrollments waited for theirs: "
        f"{result['longest_delivery_pause_s']:.1f} s"
    )
    rest = result["worker_rest_mb"]
    return [
        (
            f"worker RSS < {TARGET_WORKER_RSS_MB} MB with {result['sleeping']} sleeping "
            f"({rest:.0f} MB)",
            0 < rest < TARGET_WORKER_RSS_MB,
        ),
    ]


# ---- main --------------------------------------------------------------------------------------


async def measure(stack: Stack, args, out: dict) -> None:
    run = Run(stack, args)
    out["server_errors"] = run.server_errors  # filled as the run goes, kept if it fails
    await run.start()
    out["flow_id"] = run.flow_id
    rss_log: list[dict] = [{"sleeping": 0, "after": "idle, after start", **stack.rss_mb()}]
    out["rss"] = rss_log
    checks: list[tuple[str, bool]] = []
    scratch = stack.data_dir / "baseline.db"
    # The baseline runs before and after Herald: on a shared machine either may be disturbed.
    with start_worker(
        __file__, "--baseline-worker", stack, BASELINE_QUEUE, "--scratch", str(scratch)
    ) as worker:
        log(f"1. baseline (before): {args.enrollments} bare workflows")
        bases = [await baseline(run, scratch, worker.pid, "before")]
        herald = await herald_lifecycle(run)
        log(f"1. baseline (after): {args.enrollments} bare workflows")
        bases.append(await baseline(run, scratch, worker.pid, "after"))
    out["baseline"] = bases
    out["herald"] = herald
    out["ratio"] = rate(herald) / baseline_rate(bases)
    out["cpu_ratio"] = statistics.mean(cpu_ms(b) for b in bases) / cpu_ms(herald)
    rss_log.append(
        {"sleeping": 0, "after": f"1. {args.enrollments} enrolled + exited", **stack.rss_mb()}
    )
    checks = report_lifecycle(bases, herald, args)
    print_checks(checks)
    out["checks"] = dict(checks)
    sys.stdout.flush()

    if args.sleeping and args.samples:
        latency = await exit_latency(run)
        out["exit_latency"] = latency
        sleeping = run.counts()["sleeping"]
        rss_log.append({"sleeping": sleeping, "after": "2. exit latency", **stack.rss_mb()})
        checks = report_latency(latency)
        print_checks(checks)
        out["checks"].update(checks)
        sys.stdout.flush()

    if args.memory_enrollments:
        result = await memory(run, rss_log)
        out["memory"] = result
        checks = report_memory(result, rss_log)
        print_checks(checks)
        out["checks"].update(checks)
    out["final"] = run.summary()
    print(f"\nAPI 5xx answers (retried): {len(run.server_errors)}")
    for when, request, status, body in run.server_errors[:10]:
        print(f"  {when} {request} -> {status}: {body[:120]}")
    print_checks([("no 5xx from the API", not run.server_errors)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enrollments", type=int, default=500, help="life-cycle enrollments")
    parser.add_argument("--sleeping", type=int, default=1_000, help="asleep during exit latency")
    parser.add_argument("--samples", type=int, default=200, help="exit latency samples")
    parser.add_argument(
        "--memory-enrollments", type=int, default=10_000, help="asleep for the RSS check; 0 skips"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="connections / RPCs in flight")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch request")
    stack_arguments(parser, "--baseline-worker", "--scratch")
    args = parser.parse_args()

    if args.baseline_worker:
        import baseline as bare

        asyncio.run(bare.run_worker(args.address, args.task_queue, args.scratch))
        return

    print(
        f"cores: {os.cpu_count()}  enrollments: {args.enrollments}  sleeping: {args.sleeping}  "
        f"samples: {args.samples}  memory: {args.memory_enrollments}  "
        f"concurrency: {args.concurrency}  batch: {args.batch_size}",
        flush=True,
    )
    run_on_stack("flows", measure, args)


if __name__ == "__main__":
    main()
