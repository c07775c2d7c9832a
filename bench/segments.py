"""Segment benchmark: full compute, incremental update and RFM over 100k profiles and 1M events.

For each backend (SQLite in a temporary file; PostgreSQL in a fresh schema `bench_segments_<pid>`,
dropped at the end, when HERALD_BENCH_POSTGRES_URL or HERALD_TEST_POSTGRES_URL is set) it
migrates an empty database, bulk-loads a deterministic data set (--profiles profiles with
country / vip / age properties, half with email consent; --events events: 30 % Placed Order with
a value, Viewed Product, Opened Email, spread over the last 400 days), analyzes it and measures:

1. Full compute of a three-group segment (DEFINITION): `create_segment` once, then
   `segment_membership.refresh` on an emptied membership, median of 3 (commit included).
2. Incremental update: one Placed Order for a random profile through `herald.ingest`, then
   `refresh_dependents` for that profile in its own transaction, as the routing handler does
   per batch; median and p95 over 50 events.
3. RFM: `run_rfm` twice: as of the data's "now" (every customer gets a first group) and a day
   later (few groups move).

Baseline, in the same run: the naive design, which loads each profile and evaluates the
definition in Python with three queries per profile (profile, its events, its consent). It is
timed over a random sample of --naive-sample profiles and extrapolated linearly to all of them,
and its answer on the sample must equal the SQL membership (mismatches are printed).

Targets (PostgreSQL): full compute < 5 s, incremental p95 < 50 ms, each RFM run < 30 s. It prints
a table with the targets marked met/MISSED and writes bench/results/segments.json. Usage:

    make bench-segments   # or: .venv/bin/python bench/segments.py [--profiles 100000]
        [--events 1000000] [--backends sqlite,postgres] [--naive-sample 2000] [--seed 7]
"""

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import log, percentile, pick_backends, print_checks, save
from sqlalchemy import Table, delete, insert, select, text
from sqlalchemy.engine import Connection, Engine

from herald.analytics.rfm_run import run_rfm
from herald.cli.migrate import upgrade
from herald.core.db import make_engine, session_scope
from herald.ingest.events import MetricDirectory, ingest
from herald.segments.definition import (
    PROFILE_FIELDS,
    BetweenDates,
    ConsentCondition,
    LastDays,
    MetricCondition,
    PropertyCondition,
    SegmentDefinition,
)
from herald.segments.membership import refresh, refresh_dependents
from herald.segments.store import create_segment
from models.events import Event, EventIn
from models.profile import Consent, Profile
from models.segments import Segment, SegmentMembership

TARGET_FULL_S = 5.0
TARGET_INCREMENTAL_MS = 50.0
TARGET_RFM_S = 30.0
FULL_RUNS = 3
INCREMENTAL_EVENTS = 50
CHUNK = 10_000
HISTORY_DAYS = 400

COUNTRIES = ("NL", "DE", "US", "GB", "FR", "BE", "ES", "IT", "SE", "PL")
METRICS = ("Placed Order", "Viewed Product", "Opened Email")
METRIC_WEIGHTS = (0.3, 0.4, 0.3)

# Ordered at least twice in 90 days for more than 50, AND (Dutch OR vip), AND (subscribed to
# email OR older than 30).
DEFINITION: dict[str, Any] = {
    "all_of": [
        {
            "any_of": [
                {
                    "type": "metric",
                    "metric": "Placed Order",
                    "operator": "at_least",
                    "count": 2,
                    "timeframe": {"type": "last_days", "days": 90},
                    "filters": [
                        {
                            "property": "$value",
                            "value_type": "number",
                            "operator": "gt",
                            "value": 50,
                        }
                    ],
                }
            ]
        },
        {
            "any_of": [
                {"type": "property", "property": "country", "operator": "equals", "value": "NL"},
                {
                    "type": "property",
                    "property": "vip",
                    "value_type": "boolean",
                    "operator": "is_true",
                },
            ]
        },
        {
            "any_of": [
                {"type": "consent", "channel": "email", "status": "subscribed"},
                {
                    "type": "property",
                    "property": "age",
                    "value_type": "number",
                    "operator": "gt",
                    "value": 30,
                },
            ]
        },
    ]
}


# ---- data --------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """What the measurements need to know about the generated rows."""

    now: datetime
    profile_ids: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)


def profile_rows(dataset: Dataset, count: int, rng: random.Random) -> Iterator[dict]:
    """Profiles created over the last two years, with time-ordered ids like herald.ids makes."""
    span = timedelta(days=730)
    for i in range(count):
        created = dataset.now - span + span * (i / count)
        millis = int(created.timestamp() * 1000)
        profile_id = f"prof_{millis:011x}{rng.getrandbits(32):08x}"
        email = f"user{i}@bench.example"
        properties: dict[str, Any] = {
            "country": rng.choice(COUNTRIES),
            "vip": rng.random() < 0.1,
        }
        if rng.random() < 0.95:  # some profiles never told us their age
            properties["age"] = rng.randint(18, 80)
        dataset.profile_ids.append(profile_id)
        dataset.emails.append(email)
        yield {
            "id": profile_id,
            "email": email,
            "push_tokens": [],
            "properties": properties,
            "created_at": created,
            "updated_at": created,
        }


def consent_rows(dataset: Dataset, rng: random.Random) -> Iterator[dict]:
    """Email consent for half of the profiles: 70 % subscribed, 30 % unsubscribed."""
    for profile_id in dataset.profile_ids:
        if rng.random() < 0.5:
            yield {
                "profile_id": profile_id,
                "channel": "email",
                "status": "subscribed" if rng.random() < 0.7 else "unsubscribed",
                "source": "bench",
                "updated_at": dataset.now,
            }


def event_rows(
    dataset: Dataset, count: int, metric_ids: dict[str, int], rng: random.Random
) -> Iterator[dict]:
    """Events over the last HISTORY_DAYS; older profiles have more of them (a long tail)."""
    ids = dataset.profile_ids
    n = len(ids)
    names = rng.choices(METRICS, METRIC_WEIGHTS, k=count)
    for i, name in enumerate(names):
        at = dataset.now - timedelta(seconds=rng.random() * HISTORY_DAYS * 86_400)
        value = None
        if name == "Placed Order":
            value = round(rng.uniform(5, 200), 2)
            properties: dict[str, Any] = {"$value": value, "items": rng.randint(1, 5)}
        elif name == "Viewed Product":
            properties = {"sku": f"SKU-{rng.randrange(500)}"}
        else:
            properties = {"campaign": f"cmp-{rng.randrange(50)}"}
        yield {
            "profile_id": ids[int(n * rng.random() ** 1.5)],
            "metric_id": metric_ids[name],
            "time": at,
            "value": value,
            "properties": properties,
            "unique_id": f"bench-{i}",
            "source": "bench",
            "received_at": at,
        }


def chunks(rows: Iterator[dict], size: int = CHUNK) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None)  # UTCDateTime stores naive UTC
    return value


def _copy(conn: Connection, table: str, rows: Iterator[dict]) -> None:
    """PostgreSQL COPY through psycopg's connection under this SQLAlchemy transaction."""
    cursor = conn.connection.driver_connection.cursor()
    first = next(rows, None)
    if first is None:
        return
    columns = list(first)
    quoted = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
        copy.write_row([_copy_value(first[c]) for c in columns])
        for row in rows:
            copy.write_row([_copy_value(row[c]) for c in columns])


def _insert_chunks(conn: Connection, table: Table, rows: Iterator[dict]) -> None:
    """executemany in chunks, in one transaction with a bigger page cache: the event indexes are
    written in random order, and a small cache would write each page to the WAL many times."""
    cache = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql("PRAGMA cache_size=-262144")  # 256 MiB
    for chunk in chunks(rows):
        conn.execute(insert(table), chunk)
    conn.exec_driver_sql(f"PRAGMA cache_size={int(cache)}")


def load(engine: Engine, dataset: Dataset, profiles: int, events: int, seed: int) -> dict:
    """Writes the data set; returns the seconds taken by each part."""
    rng = random.Random(seed)
    metric_ids = MetricDirectory().ids_for(engine, set(METRICS))
    postgres = engine.dialect.name == "postgresql"
    tables = (
        (Profile.__table__, lambda: profile_rows(dataset, profiles, rng)),
        (Consent.__table__, lambda: consent_rows(dataset, rng)),
        (Event.__table__, lambda: event_rows(dataset, events, metric_ids, rng)),
    )
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for table, rows in tables:
        t0 = time.perf_counter()
        with engine.begin() as conn:
            if postgres:
                _copy(conn, table.name, rows())
            else:
                _insert_chunks(conn, table, rows())
        seconds[table.name] = time.perf_counter() - t0
    seconds["load"] = time.perf_counter() - started
    t0 = time.perf_counter()
    analyze(engine, "profile", "consent", "event", "metric")
    seconds["analyze"] = time.perf_counter() - t0
    return seconds


def analyze(engine: Engine, *tables: str) -> None:
    """Fresh planner statistics, as autovacuum (PostgreSQL) or `PRAGMA optimize` would keep.

    On PostgreSQL VACUUM as well: autovacuum would otherwise wake up mid-measurement."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text(f"VACUUM (ANALYZE) {', '.join(tables)}"))
    else:
        with engine.begin() as conn:
            for table in tables:
                conn.execute(text(f"ANALYZE {table}"))


# ---- the naive design --------------------------------------------------------------------------


def _typed(raw: Any, value_type: str) -> Any:
    if value_type == "text":
        return raw if isinstance(raw, str) else None
    if value_type == "number":
        return raw if isinstance(raw, int | float) and not isinstance(raw, bool) else None
    if value_type == "boolean":
        return raw if isinstance(raw, bool) else None
    raise NotImplementedError(f"the naive evaluator does not read {value_type!r} values")


def _holds(value: Any, operator: str, arg: Any) -> bool:
    if operator in ("is_set", "not_set"):
        return (value is None) == (operator == "not_set")
    if operator.startswith("not_"):
        return value is None or not _holds(value, operator.removeprefix("not_"), arg)
    if value is None:
        return False
    tests: dict[str, Callable[[], bool]] = {
        "equals": lambda: value == arg,
        "in": lambda: value in arg,
        "contains": lambda: arg in value,
        "starts_with": lambda: value.startswith(arg),
        "gt": lambda: value > arg,
        "gte": lambda: value >= arg,
        "lt": lambda: value < arg,
        "lte": lambda: value <= arg,
        "between": lambda: arg[0] <= value <= arg[1],
        "is_true": lambda: value is True,
        "is_false": lambda: value is False,
    }
    return tests[operator]()


def _filter_passes(f, value: float | None, properties: dict) -> bool:
    own = value if f.property == "$value" else _typed(properties.get(f.property), f.value_type)
    return _holds(own, f.operator, f.value)


def _naive_condition(condition, profile: dict, events: list, consent: dict, now: datetime) -> bool:
    if isinstance(condition, PropertyCondition):
        if condition.property in PROFILE_FIELDS:
            raise NotImplementedError("the naive evaluator reads properties only")
        value = _typed(profile["properties"].get(condition.property), condition.value_type)
        return _holds(value, condition.operator, condition.value)
    if isinstance(condition, ConsentCondition):
        return consent.get(condition.channel.value, "never_subscribed") == condition.status
    if isinstance(condition, MetricCondition):
        frame = condition.timeframe
        count = 0
        for metric, at, value, properties in events:
            if metric != condition.metric:
                continue
            if isinstance(frame, LastDays) and not now - timedelta(days=frame.days) <= at <= now:
                continue
            if isinstance(frame, BetweenDates) and not frame.start <= at.date() <= frame.end:
                continue
            if all(_filter_passes(f, value, properties) for f in condition.filters):
                count += 1
        if condition.operator == "at_least":
            return count >= condition.count
        if condition.operator == "exactly":
            return count == condition.count
        return count <= condition.count
    raise NotImplementedError(f"the naive evaluator does not evaluate {condition!r}")


def naive_members(
    engine: Engine, definition: SegmentDefinition, profile_ids: list[str], now: datetime
) -> tuple[set[str], float]:
    """Members among `profile_ids`, one profile at a time; and the seconds it took."""
    profile, event, consent = Profile.__table__, Event.__table__, Consent.__table__
    events_of = select(event.c.metric_id, event.c.time, event.c.value, event.c.properties)
    members = set()
    started = time.perf_counter()
    with engine.connect() as conn:
        metric_names = dict(conn.execute(text("SELECT id, name FROM metric")).all())
        for profile_id in profile_ids:
            row = conn.execute(select(profile).where(profile.c.id == profile_id)).one()._asdict()
            events = [
                (metric_names[m], at, value, properties)
                for m, at, value, properties in conn.execute(
                    events_of.where(event.c.profile_id == profile_id)
                )
            ]
            consents = dict(
                conn.execute(
                    select(consent.c.channel, consent.c.status).where(
                        consent.c.profile_id == profile_id
                    )
                ).all()
            )
            if all(
                any(_naive_condition(c, row, events, consents, now) for c in group.any_of)
                for group in definition.all_of
            ):
                members.add(profile_id)
    return members, time.perf_counter() - started


# ---- measurements ------------------------------------------------------------------------------


def full_compute(engine: Engine, now: datetime) -> dict:
    t0 = time.perf_counter()
    with session_scope(engine) as session:
        segment = create_segment(session, name="bench", definition=DEFINITION, now=now)
    create_seconds = time.perf_counter() - t0
    runs = []
    for _ in range(FULL_RUNS):
        with session_scope(engine) as session:
            session.execute(
                delete(SegmentMembership).where(SegmentMembership.segment_id == segment.id)
            )
        t0 = time.perf_counter()
        with session_scope(engine) as session:
            refresh(session, session.get(Segment, segment.id), now, organic=False)
        runs.append(time.perf_counter() - t0)
    with session_scope(engine) as session:
        members = session.get(Segment, segment.id).member_count
    return {
        "segment_id": segment.id,
        "create_segment_s": create_seconds,
        "refresh_runs_s": runs,
        "median_s": statistics.median(runs),
        "members": members,
    }


def naive_check(engine: Engine, dataset: Dataset, full: dict, sample: int, rng: random.Random):
    profile_ids = rng.sample(dataset.profile_ids, min(sample, len(dataset.profile_ids)))
    definition = SegmentDefinition.model_validate(DEFINITION)
    naive, seconds = naive_members(engine, definition, profile_ids, dataset.now)
    with engine.connect() as conn:
        stored = set(
            conn.execute(
                select(SegmentMembership.profile_id).where(
                    SegmentMembership.segment_id == full["segment_id"]
                )
            ).scalars()
        )
    sql = stored & set(profile_ids)
    extrapolated = seconds * len(dataset.profile_ids) / len(profile_ids)
    return {
        "sample": len(profile_ids),
        "sample_s": seconds,
        "sample_members": len(naive),
        "mismatches": len(naive ^ sql),
        "extrapolated_s": extrapolated,
        "ratio": extrapolated / full["median_s"],
    }


def incremental(engine: Engine, dataset: Dataset, rng: random.Random) -> dict:
    directory = MetricDirectory()
    latencies, joined = [], 0
    for i in range(INCREMENTAL_EVENTS):
        index = rng.randrange(len(dataset.profile_ids))
        profile_id = dataset.profile_ids[index]
        value = round(rng.uniform(5, 200), 2)
        event = EventIn.model_validate(
            {
                "metric": "Placed Order",
                "profile": {"email": dataset.emails[index]},
                "value": value,
                "properties": {"items": 1},
                "time": datetime.now(UTC),
                "unique_id": f"bench-incremental-{i}",
            }
        )
        ingest(engine, directory, [event], "bench")
        t0 = time.perf_counter()
        with session_scope(engine) as session:
            changed = refresh_dependents(
                session, [profile_id], datetime.now(UTC), metrics={"Placed Order"}
            )
        latencies.append((time.perf_counter() - t0) * 1000)
        joined += sum(len(d.added) for d in changed.values())
    return {
        "events": len(latencies),
        "median_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 0.95),
        "max_ms": max(latencies),
        "joined": joined,
    }


def rfm(engine: Engine, now: datetime) -> dict:
    runs = []
    for label, as_of in (("first", now), ("next_day", now + timedelta(days=1))):
        t0 = time.perf_counter()
        with session_scope(engine) as session:
            outcome = run_rfm(session, as_of)
            status, report = outcome.run.status, outcome.run.report
        runs.append(
            {
                "run": label,
                "seconds": time.perf_counter() - t0,
                "status": status,
                "customers": report.get("customers"),
                "changed": report.get("changed"),
            }
        )
    return {"runs": runs}


def measure(engine: Engine, args: argparse.Namespace) -> dict:
    dataset = Dataset(now=datetime.now(UTC).replace(microsecond=0))
    log(f"loading {args.profiles:,} profiles and {args.events:,} events")
    out: dict[str, Any] = {"load_s": load(engine, dataset, args.profiles, args.events, args.seed)}
    log(
        f"generated and loaded in {out['load_s']['load']:.1f} s "
        f"(analyze {out['load_s']['analyze']:.1f} s)"
    )
    rng = random.Random(args.seed + 1)
    out["full"] = full_compute(engine, dataset.now)
    log(f"full compute: {out['full']}")
    if not args.stale_stats:
        # The membership went from empty to thousands of rows; autovacuum would re-analyze it.
        # With the empty table's statistics, PostgreSQL's generic plan for the incremental
        # DELETE filters every member of the segment against the chunk's ids (--stale-stats).
        analyze(engine, "segment_membership")
    # Before the incremental events move anyone: the naive answer must match this membership.
    out["naive"] = naive_check(engine, dataset, out["full"], args.naive_sample, rng)
    log(f"naive: {out['naive']}")
    out["incremental"] = incremental(engine, dataset, rng)
    log(f"incremental: {out['incremental']}")
    out["rfm"] = rfm(engine, dataset.now)
    log(f"rfm: {out['rfm']}")
    return out


# ---- backends ----------------------------------------------------------------------------------


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="herald-bench-segments-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'herald.db'}")
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def postgres_engine(url: str) -> Iterator[Engine]:
    schema = f"bench_segments_{os.getpid()}"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine = make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def checks(result: dict) -> list[tuple[str, bool]]:
    return [
        (f"full compute < {TARGET_FULL_S:g} s", result["full"]["median_s"] < TARGET_FULL_S),
        (
            f"incremental p95 < {TARGET_INCREMENTAL_MS:g} ms",
            result["incremental"]["p95_ms"] < TARGET_INCREMENTAL_MS,
        ),
        (
            f"each RFM run < {TARGET_RFM_S:g} s",
            max(r["seconds"] for r in result["rfm"]["runs"]) < TARGET_RFM_S,
        ),
        ("naive and SQL agree on the sample", result["naive"]["mismatches"] == 0),
    ]


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    print(
        f"\n{args.profiles:,} profiles, {args.events:,} events; medians of {FULL_RUNS} full "
        f"computes and of {INCREMENTAL_EVENTS} incremental updates; naive timed on a sample of "
        f"{args.naive_sample:,} profiles and extrapolated linearly to {args.profiles:,}; "
        f"membership statistics {'stale' if args.stale_stats else 'analyzed'} after full compute"
    )
    header = (
        f"{'backend':9} {'load (s)':>9} {'full compute (s)':>17} {'incr med/p95 (ms)':>18} "
        f"{'RFM 1st/2nd (s)':>16} {'naive extrap (s)':>17} {'ratio':>7} {'mismatch':>8}"
    )
    print(header)
    print("-" * len(header))
    for backend, r in results.items():
        first, second = (run["seconds"] for run in r["rfm"]["runs"])
        print(
            f"{backend:9} {r['load_s']['load'] + r['load_s']['analyze']:9.1f} "
            f"{r['full']['median_s']:17.2f} "
            f"{r['incremental']['median_ms']:8.1f} / {r['incremental']['p95_ms']:7.1f} "
            f"{first:7.1f} / {second:6.1f} {r['naive']['extrapolated_s']:17.0f} "
            f"{r['naive']['ratio']:6.0f}x {r['naive']['mismatches']:8d}"
        )
    for backend, r in results.items():
        full, rfm_runs = r["full"], r["rfm"]["runs"]
        refreshes = ", ".join(f"{s:.2f}" for s in full["refresh_runs_s"])
        print(
            f"\n{backend}: {full['members']:,} members; "
            f"create_segment {full['create_segment_s']:.2f} s; refresh runs {refreshes} s; "
            f"{r['incremental']['joined']} of {r['incremental']['events']} incremental events "
            f"added a member; RFM customers {rfm_runs[0]['customers']:,}, changed "
            f"{rfm_runs[0]['changed']:,} then {rfm_runs[1]['changed']:,}"
        )
        target = "targets" if backend == "postgres" else "targets (set for PostgreSQL)"
        print(f"  {target}:")
        print_checks(checks(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    parser.add_argument("--naive-sample", type=int, default=2_000, help="profiles timed naively")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--stale-stats",
        action="store_true",
        help="keep the empty membership's planner statistics after the full compute",
    )
    args = parser.parse_args()

    engines: dict[str, Callable[[], Any]] = {
        backend: (lambda url=url: postgres_engine(url)) if url else sqlite_engine
        for backend, url in pick_backends(parser, args.backends.split(","))
    }

    print(f"cores: {os.cpu_count()}  profiles: {args.profiles:,}  events: {args.events:,}")
    started = time.monotonic()
    results: dict[str, dict] = {}
    for backend, engine_for in engines.items():
        log(f"== {backend} ==")
        with engine_for() as engine:
            upgrade(engine)
            results[backend] = measure(engine, args)
    report(results, args)
    out = {
        "cores": os.cpu_count(),
        "args": vars(args),
        "targets": {
            "full_compute_s": TARGET_FULL_S,
            "incremental_p95_ms": TARGET_INCREMENTAL_MS,
            "rfm_s": TARGET_RFM_S,
        },
        "backends": {b: {**r, "checks": dict(checks(r))} for b, r in results.items()},
        "bench_seconds": time.monotonic() - started,
    }
    save("segments", out, stamped=False, seconds=out["bench_seconds"])


if __name__ == "__main__":
    main()
