"""The delivery policy shared by flows and campaigns: smart sending, frequency caps, quiet hours.

Pure arithmetic over timestamps and counts (the deliver activity does the queries), so each rule
has one implementation and can be tested on its own.
"""

from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from models.enums import Channel

# Quiet hours hold texts (SMS, WhatsApp) only: an email or push at night waits in the inbox.
QUIET_HOURS_CHANNELS = frozenset({Channel.sms, Channel.whatsapp})
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


class SkipReason(StrEnum):
    """Why a message was not sent: recorded on its delivery row and reported per step."""

    exited = "exited"
    profile_deleted = "profile_deleted"
    channel_disabled = "channel_disabled"
    missing_address = "missing_address"
    no_consent = "no_consent"
    filter = "filter"
    segment = "segment"
    smart_sending = "smart_sending"
    capped = "capped"
    # Campaigns only: a flow holds an SMS until quiet hours end; a campaign wave skips it.
    quiet_hours = "quiet_hours"


class FailReason(StrEnum):
    template_error = "template_error"
    provider_rejected = "provider_rejected"


def smart_sending_window(channel: Channel, hours_by_channel: dict[str, int]) -> timedelta:
    """The account's window for a channel; a channel it does not list gets no window."""
    return timedelta(hours=hours_by_channel.get(channel, 0))


def recently_messaged(last_sent_at: datetime | None, now: datetime, window: timedelta) -> bool:
    """Smart sending: was the last message on this channel strictly within the window?"""
    return last_sent_at is not None and window > timedelta(0) and now - last_sent_at < window


def cap_reached(caps: dict[str, int] | None, sent_last_day: int, sent_last_week: int) -> bool:
    """Frequency caps, `{"per_day": n, "per_week": m}` (either optional): is one already full?"""
    if not caps:
        return False
    per_day, per_week = caps.get("per_day"), caps.get("per_week")
    return (per_day is not None and sent_last_day >= per_day) or (
        per_week is not None and sent_last_week >= per_week
    )


def zone_or(name: str | None, fallback: str) -> ZoneInfo:
    """The profile's zone; an unknown or missing one falls back to the account's (then UTC)."""
    for candidate in (name, fallback):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def parse_clock(value: str) -> time:
    """A wall-clock time as the account stores it ("21:00")."""
    return time.fromisoformat(value)


def quiet_hours_end(now: datetime, zone: ZoneInfo, start: time, end: time) -> datetime | None:
    """When `now` falls in the local window [start, end), the window's end in UTC; else None.

    The window may wrap midnight (21:00-08:00). The end is a local wall-clock time, so across
    a DST change the hold is 10 or 12 hours rather than 11; a start equal to the end means no
    quiet hours.
    """
    if start == end:
        return None
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    if start < end:
        inside, end_date = start <= clock < end, local.date()
    elif clock >= start:
        inside, end_date = True, local.date() + DAY
    else:
        inside, end_date = clock < end, local.date()
    if not inside:
        return None
    return datetime.combine(end_date, end, tzinfo=zone).astimezone(UTC)
