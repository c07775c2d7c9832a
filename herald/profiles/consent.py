"""Per-channel consent: current state plus an append-only history of every change."""

from sqlmodel import Session, select

from herald.profiles.changes import announce_profile_changes
from models.enums import Channel, ConsentStatus
from models.profile import Consent, ConsentChange, Profile
from models.types import utcnow


class MissingAddress(ValueError):
    """Subscribing a channel the profile has no address for (SMS without a phone, ...)."""


def address_for(profile: Profile, channel: Channel) -> str | list[str] | None:
    if channel is Channel.email:
        return profile.email
    if channel in (Channel.sms, Channel.whatsapp):
        return profile.phone
    return profile.push_tokens or None


def set_consent(
    session: Session, profile: Profile, channel: Channel, status: ConsentStatus, source: str
) -> Consent:
    if status is ConsentStatus.subscribed and not address_for(profile, channel):
        need = {"email": "an email address", "push": "a push token"}.get(channel, "a phone number")
        raise MissingAddress(f"cannot subscribe {channel}: the profile has no {need}")
    now = utcnow()
    row = session.get(Consent, (profile.id, channel))
    if row is None:
        row = Consent(profile_id=profile.id, channel=channel, status=status, source=source)
    row.status, row.source, row.updated_at = status, source, now
    session.add(row)
    session.add(
        ConsentChange(profile_id=profile.id, channel=channel, status=status, source=source, at=now)
    )
    session.flush()  # the profile row exists before the outbox row names it
    announce_profile_changes(session, [profile.id], now)
    return row


def consent_map(session: Session, profile_id: str) -> dict[str, ConsentStatus]:
    """Every channel's status; channels never touched read as never_subscribed."""
    states = {c.value: ConsentStatus.never_subscribed for c in Channel}
    for row in session.exec(select(Consent).where(Consent.profile_id == profile_id)):
        states[row.channel] = ConsentStatus(row.status)
    return states
