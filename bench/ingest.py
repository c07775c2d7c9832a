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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from herald.config import Settings
from herald.devstack import find_binary

RESULTS = Path(__file__).parent / "results"

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Connection:
    """A keep-alive HTTP/1.1 connection on raw asyncio streams.

    httpx costs about a millisecond of CPU per request, as much as the server's own work; on a
    2-core machine a heavy load generator would measure itself. This one only frames bytes.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = f"content-type: application/json\r\ncontent-length: {len(body)}\r\n" if body else ""
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\n{self.head}{extra}\r\n".encode()
            + (body or b"")
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def drive(stack: "Stack", key: str, name: str, total: int, concurrency: int, make) -> Phase:
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
        conn = Connection("127.0.0.1", stack.api_port, {"authorization": f"Bearer {key}"})
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


class Stack:
    """`herald dev` on free ports with its own data dir; stopped with SIGTERM like Ctrl-C."""

    def __init__(self, database_url: str | None) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
        self.api_port = free_port()
        env = {
            **os.environ,
            "HERALD_DATA_DIR": str(self.data_dir),
            "HERALD_DEV_TEMPORAL_PORT": str(free_port()),
            "HERALD_TEMPORAL_UI_PORT": str(free_port()),
            "HERALD_API_PORT": str(self.api_port),
            "HERALD_WORKER_METRICS_PORT": str(free_port()),
            "HERALD_LOG_LEVEL": "WARNING",
        }
        for name in ("TEMPORAL_ADDRESS", "HERALD_TEMPORAL_ADDRESS", "HERALD_DATABASE_URL"):
            env.pop(name, None)
        if database_url:
            env["HERALD_DATABASE_URL"] = database_url
        self.proc = subprocess.Popen(
            [find_binary("herald"), "dev"],
            env=env,
            stdout=subprocess.DEVNULL,
            # The stack's own logs (Temporal is chatty) go to a file, not over the table.
            stderr=open(self.data_dir.parent / f"{self.data_dir.name}.log", "w"),  # noqa: SIM115
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.api_port}"
        deadline = time.monotonic() + 120
        keys_file = self.data_dir / "dev-keys.json"
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"herald dev exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("herald dev did not become ready in 120 s")
            try:
                if keys_file.exists() and httpx.get(f"{self.base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.keys = json.loads(keys_file.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.data_dir, ignore_errors=True)


async def routing_status(stack: "Stack") -> dict:
    async with httpx.AsyncClient(base_url=stack.base) as client:
        headers = {"Authorization": f"Bearer {stack.keys['private_key']}"}
        return (await client.get("/v1/routing/status", headers=headers)).json()


async def measure(stack: "Stack", single: int, batches: int) -> dict:
    run = uuid.uuid4().hex[:8]
    key = stack.keys["write_key"]
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
    # Drain: time until the router has routed everything accepted.
    while status["pending"] > 0:
        await asyncio.sleep(0.25)
        status = await routing_status(stack)
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
    for label, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=3_000, help="single-event requests")
    parser.add_argument("--batches", type=int, default=300, help="batches of 100 events")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    args = parser.parse_args()

    backends: list[tuple[str, str | None]] = []
    if args.backend in ("sqlite", "all"):
        backends.append(("sqlite", None))
    pg_url = os.environ.get("HERALD_BENCH_POSTGRES_URL") or os.environ.get(
        "HERALD_TEST_POSTGRES_URL"
    )
    if args.backend in ("postgres", "all"):
        if pg_url:
            backends.append(("postgres", pg_url))
        else:
            print("PostgreSQL skipped: set HERALD_BENCH_POSTGRES_URL", file=sys.stderr)

    print(f"cores: {os.cpu_count()}  single: {args.single}  batches: {args.batches} x 100")
    out: dict = {"cores": os.cpu_count(), "backends": {}}
    for backend, url in backends:
        db_name = None
        if url:
            db_name, url = postgres_database(url)
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
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nraw numbers: {path}")


if __name__ == "__main__":
    main()
