"""Group commit: concurrent ingest requests share transactions but keep their own results."""

import asyncio

import pytest

import herald.ingest.group_commit as group_commit
from herald.ingest.events import MetricDirectory
from herald.ingest.group_commit import IngestQueue
from models.events import EventIn


def order(customer: str, unique_id: str, metric: str = "Placed Order") -> EventIn:
    return EventIn.model_validate(
        {"metric": metric, "profile": {"external_id": customer}, "unique_id": unique_id}
    )


async def test_concurrent_submissions_are_grouped_and_answered_in_order(db, monkeypatch):
    transactions = []
    real_ingest = group_commit.ingest

    def counting_ingest(engine, metrics, events, source):
        transactions.append(len(events))
        return real_ingest(engine, metrics, events, source)

    monkeypatch.setattr(group_commit, "ingest", counting_ingest)
    queue = IngestQueue(db.engine, MetricDirectory())
    # 50 requests; the last repeats the first (a client retry racing the original).
    submissions = [[order(f"c{i}", f"o{i}")] for i in range(49)] + [[order("c0", "o0")]]
    results = await asyncio.gather(*(queue.submit(s, "api") for s in submissions))

    assert len(transactions) < 50, "concurrent requests must share transactions"
    assert sum(transactions) == 50
    assert [r.duplicate for [r] in results] == [False] * 49 + [True]
    assert results[-1][0].event_id == results[0][0].event_id
    assert db.scalar("SELECT count(*) FROM event") == 49
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE kind = 'event'") == 49
    again = await asyncio.gather(*(queue.submit(s, "api") for s in submissions[:10]))
    assert all(r.duplicate for [r] in again)
    assert [r.event_id for [r] in again] == [r.event_id for [r] in results[:10]]


async def test_one_failing_request_does_not_fail_the_others(db, monkeypatch):
    real_ingest = group_commit.ingest

    def fragile_ingest(engine, metrics, events, source):
        if any(e.metric == "Boom" for e in events):
            raise RuntimeError("database said no")
        return real_ingest(engine, metrics, events, source)

    monkeypatch.setattr(group_commit, "ingest", fragile_ingest)
    queue = IngestQueue(db.engine, MetricDirectory())
    good = [queue.submit([order(f"g{i}", f"x{i}")], "api") for i in range(10)]
    bad = queue.submit([order("b", "y", metric="Boom")], "api")
    outcomes = await asyncio.gather(*good, bad, return_exceptions=True)

    assert isinstance(outcomes[-1], RuntimeError)
    assert all(isinstance(o, list) and not o[0].duplicate for o in outcomes[:-1])
    assert db.scalar("SELECT count(*) FROM event") == 10


@pytest.mark.parametrize("sizes", [[1500, 400, 300]])
async def test_groups_stay_under_the_size_limit(db, monkeypatch, sizes):
    transactions = []
    real_ingest = group_commit.ingest

    def counting_ingest(engine, metrics, events, source):
        transactions.append(len(events))
        return real_ingest(engine, metrics, events, source)

    monkeypatch.setattr(group_commit, "ingest", counting_ingest)
    queue = IngestQueue(db.engine, MetricDirectory(), max_events=2_000)
    batches = [
        [order(f"s{n}-{i}", f"s{n}-{i}") for i in range(size)] for n, size in enumerate(sizes)
    ]
    await asyncio.gather(*(queue.submit(b, "api") for b in batches))
    assert max(transactions) <= 2_000
    assert sum(transactions) == sum(sizes)
