"""Provider rate limits that hold across every worker: slots reserved in the database.

A provider that publishes a rate (Twilio long codes: about one segment a second) is paced by
one row per channel holding its next free slot. A sender reserves a slot for a chunk of n
messages in one short transaction (the row moves n / rate seconds on), commits, sleeps until
the slot starts, then sends the chunk. Every worker and process reserves on the same row, so
the rate holds however many replicas run. Temporal's task-queue rate limit was the other
candidate; it counts activities, and an activity here carries a page of up to 1,000 messages,
so it could not express messages per second without one activity per message.
"""

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from herald.core.db import session_scope
from herald.delivery.provider_hub import ProviderHub
from herald.delivery.providers.base import (
    OutgoingMessage,
    Provider,
    SendOutcome,
    not_started,
)
from models.providers import ProviderPace
from models.types import utcnow

# How long a send may still run once started; budget + grace stays inside the activity timeout.
CHUNK_GRACE = 8.0


def send_paced(
    engine: Engine,
    hub: ProviderHub,
    provider: Provider,
    channel: str,
    messages: Sequence[OutgoingMessage],
    budget: float,
) -> list[SendOutcome]:
    """Sends through the hub: all at once within the provider's concurrency, or, when it has a
    rate, in one-second chunks each on a slot reserved first.

    No message starts after `budget` seconds: those left get ProviderUnavailable, so the send
    path releases their claims and the activity's retry sends them. A slow provider thus never
    runs a page past its activity's timeout with claims it cannot account for.
    """
    deadline = time.monotonic() + budget
    rate = provider.limits.per_second
    if not rate:
        return hub.send_many(provider, messages, budget + CHUNK_GRACE, deadline=deadline)
    size = max(1, int(rate))
    outcomes: list[SendOutcome] = []
    for start in range(0, len(messages), size):
        part = messages[start : start + size]
        wait = reserve(engine, channel, len(part), rate, utcnow(), deadline - time.monotonic())
        if wait is None:
            return outcomes + [not_started() for _ in messages[start:]]
        time.sleep(wait)
        # A chunk that started may finish after the budget, within the grace.
        outcomes += hub.send_many(provider, part, deadline + CHUNK_GRACE - time.monotonic())
    return outcomes


def reserve(
    engine: Engine, channel: str, count: int, per_second: float, now: datetime, within: float
) -> float | None:
    """Reserves the next slot for `count` messages if it starts within `within` seconds;
    returns how long to wait for it, or None (nothing reserved: the queue is longer)."""
    try:
        return _reserve(engine, channel, count, per_second, now, within)
    except IntegrityError:  # another worker created the row first: reserve on it
        return _reserve(engine, channel, count, per_second, now, within)


def _reserve(
    engine: Engine, channel: str, count: int, per_second: float, now: datetime, within: float
) -> float | None:
    with session_scope(engine) as session:
        row = session.execute(
            select(ProviderPace).where(ProviderPace.channel == channel).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            row = ProviderPace(channel=channel, next_at=now)
        start = max(now, row.next_at)
        wait = (start - now).total_seconds()
        if wait >= within:
            return None  # a slot nobody would use must not push everyone after it back
        row.next_at = start + timedelta(seconds=count / per_second)
        session.add(row)
    return wait
