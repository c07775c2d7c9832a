"""Group commit for ingest: concurrent requests of one API process share one transaction.

One transaction per request makes every request wait for its own commit and, on SQLite, for the
single write lock, which waiting threads poll with back-off (seconds of tail latency under load).
Here requests queue their events; one drainer at a time stores everything queued so far in one
`ingest()` transaction (in a thread), then answers each request with its own results. A request
still gets its 2xx only after its events are committed, so nothing accepted can be lost.
"""

import asyncio
from collections import deque
from dataclasses import dataclass

from herald.ingest.events import Ingested, MetricDirectory, ingest
from models.events import EventIn


@dataclass
class _Submission:
    events: list[EventIn]
    source: str
    future: asyncio.Future


class IngestQueue:
    def __init__(self, engine, metrics: MetricDirectory, max_events: int = 2_000) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_events = max_events
        self._pending: deque[_Submission] = deque()
        self._drainer: asyncio.Task | None = None

    async def submit(self, events: list[EventIn], source: str) -> list[Ingested]:
        """Stores `events` (committed when this returns); one result per event, in order."""
        submission = _Submission(events, source, asyncio.get_running_loop().create_future())
        self._pending.append(submission)
        if self._drainer is None or self._drainer.done():
            # A task of its own, so a caller that goes away cannot strand the others.
            self._drainer = asyncio.create_task(self._drain())
        return await submission.future

    async def _drain(self) -> None:
        while self._pending:
            await self._commit(self._take_group())

    def _take_group(self) -> list[_Submission]:
        first = self._pending.popleft()
        group, size = [first], len(first.events)
        while (
            self._pending
            and self._pending[0].source == first.source
            and size + len(self._pending[0].events) <= self.max_events
        ):
            size += len(self._pending[0].events)
            group.append(self._pending.popleft())
        return group

    async def _commit(self, group: list[_Submission]) -> None:
        events = [e for s in group for e in s.events]
        try:
            results = await asyncio.to_thread(
                ingest, self.engine, self.metrics, events, group[0].source
            )
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0], error=exc)
                return
            # Keep one request's failure its own: store the others one by one.
            for submission in group:
                await self._commit([submission])
            return
        start = 0
        for submission in group:
            end = start + len(submission.events)
            _settle(submission, results=results[start:end])
            start = end


def _settle(submission: _Submission, results=None, error: Exception | None = None) -> None:
    future = submission.future
    if future.done():  # the client went away; its events are stored all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(results)
