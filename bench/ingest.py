"""Ingest benchmark: HTTP throughput and latency of event ingestion, and routing drain rate.

For each backend (SQLite always; PostgreSQL when HERALD_BENCH_POSTGRES_URL or
HERALD_TEST_POSTGRES_URL is set) it starts the whole stack with `herald dev` on free ports
(Temporal dev server, worker, API as separate processes) and drives it from this process:

  baseline  GET /healthz, 32 connections            (the cost of HTTP + auth-free routing)
  single    POST /v1/events, 32 connections         (one event per request)
  batched   POST /v1/events/batch of 100, 8 conns   (the path SDKs and importers use)
  routing   outbox drain rate after ingest, and whether the backlog kept growing

It prints one table per backend with ratios against the baseline measured in the same run, and
writes the raw numbers to bench/results/ingest-<timestamp>.json. Usage:

    make bench            # or: .venv/bin/python bench/ingest.py [--single N] [--batches N]
"""

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass

import httpx
from common import Stack, percentile, pick_backends, poll, print_checks, save
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from herald.core.config import Settings

TARGET_BATCHED_EPS = 5_000
TARGET_SINGLE_EPS = 800
TARGET_SINGLE_P99_MS = 100
ROUTER_BATCH_SIZE = Settings().router_batch_size


@dataclass
class Phase:
    name: str
    requests: int
    events: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


async def drive(stack: Stack, key: str, name: str, total: int, concurrency: int, make) -> Phase:
    """Send `total` requests over `concurrency` connections; `make(i)` gives (method, path,
    body, events in it). Bodies are encoded before the clock starts."""
    requests = [make(i) for i in range(total)]
    encoded = [
        (m, p, json.dumps(b).encode() if b is not None else None, n) for m, p, b, n in requests
    ]
    latencies: list[float] = []
    counter = iter(encoded)
    events = errors = 0

    async def worker() -> None:
        nonlocal events, errors
        conn = stack.connection(key)
        try:
            for method, path, body, n in counter:
                started = time.perf_counter()
                status, _ = await conn.request(method, path, body)
                latencies.append((time.perf_counter() - started) * 1000)
                if status >= 400:
                    errors += 1
                else:
                    events += n
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return Phase(
        name,
        total,
        events,
        seconds,
        statistics.median(latencies),
        percentile(latencies, 0.99),
        errors,
    )


def event(run: str, i: int) -> dict:
    return {
        "metric": "Viewed Product",
        "profile": {"external_id": f"bench-{i % 5_000}"},
        "properties": {"sku": f"SKU-{i % 97}", "price": 19.5},
        "unique_id": f"{run}-{i}",
    }


async def routing_status(stack: Stack) -> dict:
    async with httpx.AsyncClient(base_url=stack.base) as client:
        headers = {"Authorization": f"Bearer {stack.keys['private_key']}"}
        return (await client.get("/v1/routing/status", headers=headers)).json()


async def measure(stack: Stack, single: int, batches: int) -> dict:
    run = uuid.uuid4().hex[:8]
    key = "write_key"
    routed_before = (await routing_status(stack))["routed"]
    # Warm up connections, the metric cache and the key cache.
    await drive(
        stack, key, "warmup", 200, 8, lambda i: ("POST", "/v1/events", event("w" + run, i), 1)
    )
    baseline = await drive(
        stack, key, "baseline /healthz", single, 32, lambda i: ("GET", "/healthz", None, 0)
    )
    ingest_started = time.perf_counter()
    one = await drive(
        stack,
        key,
        "single /v1/events",
        single,
        32,
        lambda i: ("POST", "/v1/events", event(run, i), 1),
    )
    pending_after_single = (await routing_status(stack))["pending"]
    backlog: list[int] = []

    async def sample_backlog() -> None:
        while True:
            backlog.append((await routing_status(stack))["pending"])
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_backlog())
    batched = await drive(
        stack,
        key,
        "batched /v1/events/batch x100",
        batches,
        8,
        lambda i: (
            "POST",
            "/v1/events/batch",
            {"events": [event(run, single + i * 100 + j) for j in range(100)]},
            100,
        ),
    )
    sampler.cancel()
    ingest_seconds = time.perf_counter() - ingest_started
    status = await routing_status(stack)
    pending_after_ingest = status["pending"]
    ingested = one.events + batched.events + 200

    async def drained() -> bool:
        """Drain: the clock runs until the router has routed everything accepted."""
        nonlocal status
        status = await routing_status(stack)
        return status["pending"] == 0

    await poll(drained, 0.25, give_up_after=3_600)
    drain_seconds = time.perf_counter() - ingest_started
    routed = status["routed"] - routed_before
    return {
        "phases": [baseline, one, batched],
        "ingest_seconds": ingest_seconds,
        "ingested": ingested,
        "routed": routed,
        "pending_after_single": pending_after_single,
        "pending_after_ingest": pending_after_ingest,
        "backlog_samples": backlog,
        "routed_per_second": routed / drain_seconds,
        "drain_seconds": drain_seconds,
    }


def postgres_database(url: str) -> tuple[str, str]:
    """A fresh database for one run, so the numbers do not depend on earlier data."""
    name = f"herald_bench_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, name: str) -> None:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def report(backend: str, result: dict) -> None:
    baseline, one, batched = result["phases"]
    print(f"\n== {backend} ==")
    print(
        f"{'phase':32} {'requests':>9} {'req/s':>9} {'events/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'vs baseline':>12}"
    )
    for phase in result["phases"]:
        ratio = phase.requests_per_second / baseline.requests_per_second
        print(
            f"{phase.name:32} {phase.requests:9d} {phase.requests_per_second:9.0f} "
            f"{phase.events_per_second:9.0f} {phase.p50_ms:8.1f} {phase.p99_ms:8.1f} "
            f"{phase.errors:6d} {ratio:11.2f}x"
        )
    print(
        f"routing: {result['routed']} of {result['ingested']} events routed, "
        f"{result['routed_per_second']:.0f} ev/s from first request to empty outbox "
        f"({result['drain_seconds']:.1f} s); "
        f"backlog {result['pending_after_single']} after single, "
        f"{result['pending_after_ingest']} after batched "
        f"(max {max(result['backlog_samples'], default=0)} while batching)"
    )
    checks = [
        (f"batched >= {TARGET_BATCHED_EPS} ev/s", batched.events_per_second >= TARGET_BATCHED_EPS),
        (f"single >= {TARGET_SINGLE_EPS} ev/s", one.events_per_second >= TARGET_SINGLE_EPS),
        (f"single p99 < {TARGET_SINGLE_P99_MS} ms", one.p99_ms < TARGET_SINGLE_P99_MS),
        # The backlog may hold what arrived since the last claim, but must not pile up.
        ("backlog does not grow", result["pending_after_ingest"] <= ROUTER_BATCH_SIZE),
        ("no request errors", not any(p.errors for p in result["phases"])),
    ]
    print_checks(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=3_000, help="single-event requests")
    parser.add_argument("--batches", type=int, default=300, help="batches of 100 events")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    args = parser.parse_args()

    names = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    backends = pick_backends(parser, names)

    print(f"cores: {os.cpu_count()}  single: {args.single}  batches: {args.batches} x 100")
    out: dict = {"cores": os.cpu_count(), "backends": {}}
    for backend, pg_url in backends:
        db_name, url = None, pg_url
        if pg_url:
            db_name, url = postgres_database(pg_url)
        stack = Stack(url)
        try:
            result = asyncio.run(measure(stack, args.single, args.batches))
        finally:
            stack.stop()
            if db_name:
                drop_database(pg_url, db_name)
        report(backend, result)
        out["backends"][backend] = {
            **{k: v for k, v in result.items() if k != "phases"},
            "phases": [
                {**asdict(p), "events_per_second": p.events_per_second} for p in result["phases"]
            ],
        }
    save("ingest", out)


if __name__ == "__main__":
    main()
