"""The delivery policy shared by flows and campaigns: one decision over the facts of a message.

`decide` reads the facts of one (profile, message) in the order operators read the rules and
returns the first that blocks it, a hold, or a send. The flow `deliver` activity gathers the facts
with its own queries (lazily: a rule that already blocked spares the queries behind it), the
campaign page sender with set-based SQL for a whole page; both call `decide`, so a rule cannot
exist on one path only. The helpers below are the pure arithmetic behind single facts.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Protocol
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


class QuietHours(StrEnum):
    """What a text inside quiet hours does: a flow waits for the window's end, a campaign wave
    (sent at a chosen time for everyone in it) skips the profile."""

    hold = "hold"
    skip = "skip"


class DeliveryFacts(Protocol):
    """What `decide` reads about one (profile, message), in this order."""

    @property
    def exited(self) -> bool: ...  # the run (enrollment, campaign) was exited or converted
    @property
    def channel_enabled(self) -> bool: ...
    @property
    def profile_exists(self) -> bool: ...
    @property
    def has_address(self) -> bool: ...
    @property
    def subscribed(self) -> bool: ...
    @property
    def passes_filters(self) -> bool: ...  # no filters: True
    @property
    def in_segment(self) -> bool: ...  # no segment to stay in: True
    @property
    def recently_messaged(self) -> bool: ...  # smart sending on, and a send within its window
    @property
    def cap_reached(self) -> bool: ...  # a frequency cap applies and is full
    @property
    def quiet_hours_end(self) -> datetime | None: ...  # set when a text would go out at night


@dataclass(frozen=True)
class Facts:
    """The facts as plain values (what a campaign page row provides)."""

    exited: bool = False
    channel_enabled: bool = True
    profile_exists: bool = True
    has_address: bool = True
    subscribed: bool = True
    passes_filters: bool = True
    in_segment: bool = True
    recently_messaged: bool = False
    cap_reached: bool = False
    quiet_hours_end: datetime | None = None


@dataclass(frozen=True)
class Decision:
    skip: SkipReason | None = None
    hold_until: datetime | None = None

    @property
    def send(self) -> bool:
        return self.skip is None and self.hold_until is None


SEND = Decision()


def decide(facts: DeliveryFacts, quiet_hours: QuietHours) -> Decision:
    """The first rule that blocks the message, a hold until quiet hours end, or SEND."""
    if facts.exited:
        return Decision(SkipReason.exited)
    if not facts.channel_enabled:
        return Decision(SkipReason.channel_disabled)
    if not facts.profile_exists:
        return Decision(SkipReason.profile_deleted)
    if not facts.has_address:
        return Decision(SkipReason.missing_address)
    if not facts.subscribed:
        return Decision(SkipReason.no_consent)
    if not facts.passes_filters:
        return Decision(SkipReason.filter)
    if not facts.in_segment:
        return Decision(SkipReason.segment)
    if facts.recently_messaged:
        return Decision(SkipReason.smart_sending)
    if facts.cap_reached:
        return Decision(SkipReason.capped)
    if (until := facts.quiet_hours_end) is not None:
        if quiet_hours is QuietHours.skip:
            return Decision(SkipReason.quiet_hours)
        return Decision(hold_until=until)
    return SEND


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
