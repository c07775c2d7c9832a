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
from herald.delivery.providers.base import OutgoingMessage, Provider, SendOutcome
from models.providers import ProviderPace
from models.types import utcnow


def send_paced(
    engine: Engine,
    hub: ProviderHub,
    provider: Provider,
    channel: str,
    messages: Sequence[OutgoingMessage],
    timeout: float,
) -> list[SendOutcome]:
    """Sends through the hub, in one-second chunks on reserved slots when the provider has a
    rate; at once (within its concurrency) when it has none."""
    rate = provider.limits.per_second
    if not rate:
        return hub.send_many(provider, messages, timeout)
    chunk = max(1, int(rate))
    outcomes: list[SendOutcome] = []
    for start in range(0, len(messages), chunk):
        part = messages[start : start + chunk]
        time.sleep(reserve(engine, channel, len(part), rate, utcnow()))
        outcomes += hub.send_many(provider, part, timeout)
    return outcomes


def reserve(engine: Engine, channel: str, count: int, per_second: float, now: datetime) -> float:
    """Reserves the next slot for `count` messages; returns how many seconds to wait for it."""
    try:
        return _reserve(engine, channel, count, per_second, now)
    except IntegrityError:  # another worker created the row first: reserve on it
        return _reserve(engine, channel, count, per_second, now)


def _reserve(engine: Engine, channel: str, count: int, per_second: float, now: datetime) -> float:
    with session_scope(engine) as session:
        row = session.execute(
            select(ProviderPace).where(ProviderPace.channel == channel).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            row = ProviderPace(channel=channel, next_at=now)
        start = max(now, row.next_at)
        row.next_at = start + timedelta(seconds=count / per_second)
        session.add(row)
    return (start - now).total_seconds()
