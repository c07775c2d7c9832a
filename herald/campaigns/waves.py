"""When a campaign message goes out (pure): its waves, the recipients' effective zones, and the
idempotency key of each (campaign, message, profile)."""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from math import ceil
from zoneinfo import ZoneInfo, available_timezones

from herald.campaigns.contract import CampaignSettings, MessageSnapshot, Wave


@lru_cache(maxsize=1)
def valid_zones() -> frozenset[str]:
    """The IANA zone names a recipient's timezone may have; anything else is "unknown"."""
    return frozenset(available_timezones())


def campaign_zone(settings: CampaignSettings) -> str:
    """The campaign's timezone, or UTC when it is not a known zone."""
    return settings.timezone if settings.timezone in valid_zones() else "UTC"


def effective_zone(profile_zone: str | None, fallback: str) -> str:
    """A recipient's timezone for local-time sends: its own when known, else the campaign's.

    "Known" is membership of `available_timezones()`, so the SQL filter of a local-time wave
    (`timezone_condition`) and this function always put a profile in the same wave.
    """
    return profile_zone if profile_zone in valid_zones() else fallback


def idempotency_key(campaign_id: str, message_id: str, profile_id: str) -> str:
    return f"campaign:{campaign_id}:{message_id}:{profile_id}"


def local_instant(send_at_local: str, zone: str, days: int = 0) -> datetime:
    """A "YYYY-MM-DDTHH:MM" wall time in `zone` (plus whole days, as wall time) in UTC."""
    wall = datetime.fromisoformat(send_at_local) + timedelta(days=days)
    return wall.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def staggered_waves(
    at: datetime, count: int, percent: int | None, timezones: list[str] | None
) -> list[Wave]:
    """All at once, or `percent` of `count` recipients per hour (the last wave takes the rest)."""
    if not percent:
        return [Wave(at=at, timezones=timezones)]
    waves = ceil(100 / percent)
    size = -(-count * percent // 100)  # ceil without floats
    return [
        Wave(
            at=at + timedelta(hours=k),
            limit=None if k == waves - 1 else size,
            timezones=timezones,
        )
        for k in range(waves)
    ]


def plan_waves(
    settings: CampaignSettings,
    message: MessageSnapshot,
    now: datetime,
    audience: int,
    per_zone: Mapping[str, int] | None = None,
) -> list[Wave]:
    """The waves of a message, earliest first.

    Fixed timezone: the send time in the campaign's zone. Local time: one wave per effective
    recipient zone (`per_zone`: recipients per zone), at the send time's wall clock there; one
    whose time has passed goes at `now` ("immediately") or a day later ("next_day").
    Staggered messages split each of those into hourly waves.
    """
    if not settings.local_time:
        at = local_instant(message.send_at_local, campaign_zone(settings))
        return staggered_waves(at, audience, message.stagger_percent, None)
    waves: list[Wave] = []
    for zone, count in sorted((per_zone or {}).items()):
        at = local_instant(message.send_at_local, zone)
        if at < now:
            if settings.past_time_policy == "next_day":
                at = local_instant(message.send_at_local, zone, days=1)
            else:
                at = now
        waves.extend(staggered_waves(at, count, message.stagger_percent, [zone]))
    waves.sort(key=lambda w: (w.at, w.timezones or []))
    return waves
