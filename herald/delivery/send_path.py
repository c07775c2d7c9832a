"""Claim, call, record: how a message leaves Herald with no transaction open meanwhile.

1. Claim (the caller's transaction, committed): the delivery row is written `sending` under its
   unique idempotency key with the attempt's `claimed_at`, so no other attempt can send the same
   (run, step, profile).
2. Call (no transaction): the provider gets the claimed messages, concurrently within its
   limits, on the provider hub's loop.
3. Record (a short transaction): each answer lands on its row, only while the row still holds
   this attempt's claim: `sent` with the provider's id, `failed` with a reason, or, when the
   provider surely did not take it (transient, misconfigured), the claim is released (deleted)
   so the retry claims it again. An answer that leaves it open whether the message went out
   (a read timeout) keeps the row `sending`.

A row left `sending` (a dead worker, a lost answer) is resolved by the next attempt that finds
it once the claim is stale (older than an attempt can live, STALE_CLAIM), by the channel's
delivery guarantee (herald/delivery/guarantees.py): re-checked and sent again under a new claim
(the same Message-ID and key, so receivers can drop the copy), or marked `unknown`, listed by
`GET /v1/deliveries?status=unknown`, never silently. A younger claim belongs to an attempt that
may still be sending: the finder waits for it (a retryable error). A late answer from an old
attempt resolves an `unknown` row, but never touches a newer attempt's claim.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlmodel import Session
from temporalio.exceptions import ApplicationError

from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendOutcome,
    SendReceipt,
)
from herald.profiles.consent import set_consent
from models.delivery import Delivery
from models.enums import Channel, ConsentStatus, DeliveryStatus
from models.profile import Profile
from models.providers import ChannelProviderSetting

log = structlog.get_logger("herald.delivery")

_delivery = Delivery.__table__
_IN_FLIGHT = (DeliveryStatus.sending, DeliveryStatus.unknown)
# An attempt sends only within its budget plus grace after claiming (15 + 8 s, pace.py), and
# Temporal retries a lost one after its 30 s timeout: a claim this old has no live sender.
STALE_CLAIM = timedelta(seconds=30)
# A misconfigured channel is asked again this often until an operator fixes it.
MISCONFIGURED_RETRY = timedelta(minutes=1)
PROVIDER_UNAVAILABLE = "ProviderUnavailable"
PROVIDER_MISCONFIGURED = "ProviderMisconfigured"


@dataclass
class Recorded:
    """What one call's answers came to, for the caller's result and its retry."""

    sent: int = 0
    failed: int = 0
    released: int = 0  # claims given back: the provider could not take them now
    unanswered: int = 0  # kept `sending`: the provider may have them (the guarantee decides)
    retry_after: float | None = None
    misconfigured: str | None = None
    unavailable: str | None = None
    outcomes: dict[str, DeliveryStatus] = field(default_factory=dict)  # delivery id -> status

    def raise_for_retry(self) -> None:
        """Raises the retryable error Temporal backs off on, when some claims were released."""
        if self.misconfigured is not None:
            raise ApplicationError(
                f"provider misconfigured: {self.misconfigured}",
                type=PROVIDER_MISCONFIGURED,
                next_retry_delay=MISCONFIGURED_RETRY,
            )
        if self.released or self.unanswered:
            delay = None if self.retry_after is None else timedelta(seconds=self.retry_after)
            if self.unanswered:  # the retry finds them once their claim is stale
                delay = max(delay or timedelta(0), STALE_CLAIM)
            raise ApplicationError(
                f"provider unavailable for {self.released + self.unanswered} message(s): "
                f"{self.unavailable}",
                type=PROVIDER_UNAVAILABLE,
                next_retry_delay=delay,
            )


def claim_is_stale(claimed_at: datetime | None, now: datetime) -> bool:
    return claimed_at is None or claimed_at <= now - STALE_CLAIM


def wait_for_claim(claimed_at: datetime | None, now: datetime) -> ApplicationError:
    """The error that sends a finder of a younger claim away until that claim is stale."""
    left = STALE_CLAIM - (now - claimed_at) if claimed_at else STALE_CLAIM
    return ApplicationError(
        "another attempt holds this message's claim; asking again once it is stale",
        type=PROVIDER_UNAVAILABLE,
        next_retry_delay=max(left, timedelta(seconds=1)),
    )


def record(
    session: Session,
    channel: Channel,
    messages: Sequence[OutgoingMessage],
    outcomes: Sequence[SendOutcome],
    now: datetime,
    claimed_at: datetime,
) -> Recorded:
    """Step 3: writes every answer onto its row while the row holds this attempt's claim
    (`claimed_at`; see the module docstring)."""
    result = Recorded()
    updates: list[dict[str, object]] = []
    released: list[str] = []
    for message, outcome in zip(messages, outcomes, strict=True):
        if isinstance(outcome, SendReceipt):
            result.sent += 1
            result.outcomes[message.delivery_id] = DeliveryStatus.sent
            updates.append(_update(message, DeliveryStatus.sent, None, outcome, now, claimed_at))
            if outcome.dead_tokens:
                _drop_push_tokens(session, message.profile_id, outcome.dead_tokens)
        elif isinstance(outcome, ProviderRejected):
            log.warning("provider rejected", key=message.idempotency_key, error=str(outcome))
            result.failed += 1
            result.outcomes[message.delivery_id] = DeliveryStatus.failed
            updates.append(
                _update(message, DeliveryStatus.failed, outcome.reason, None, now, claimed_at)
            )
            if outcome.reason == "recipient_unsubscribed":
                _unsubscribe(session, message, outcome)
            if outcome.dead_tokens:
                _drop_push_tokens(session, message.profile_id, outcome.dead_tokens)
        elif isinstance(outcome, ProviderUnavailable) and outcome.maybe_sent:
            log.warning("provider answer lost", key=message.idempotency_key, error=str(outcome))
            result.unanswered += 1
            result.unavailable = outcome.detail
        else:
            released.append(message.delivery_id)
            if isinstance(outcome, ProviderMisconfigured):
                result.misconfigured = outcome.detail
            else:
                assert isinstance(outcome, ProviderUnavailable)
                result.unavailable = outcome.detail
                if outcome.retry_after is not None:
                    result.retry_after = max(result.retry_after or 0.0, outcome.retry_after)
    if updates:
        session.execute(
            update(_delivery)
            .where(
                _delivery.c.id == bindparam("b_id"),
                _delivery.c.claimed_at
                == bindparam("b_claimed_at", type_=_delivery.c.claimed_at.type),
                # Not IN (...): an expanding parameter cannot run as executemany.
                or_(*(_delivery.c.status == status for status in _IN_FLIGHT)),
            )
            .values(
                status=bindparam("b_status"),
                reason=bindparam("b_reason"),
                provider_message_id=bindparam("b_pmid"),
                # The provider's count when it gives one, else the one counted at the claim.
                segments=func.coalesce(bindparam("b_segments"), _delivery.c.segments),
                sent_at=bindparam("b_sent_at", type_=_delivery.c.sent_at.type),
            ),
            updates,
        )
    if released:
        session.execute(
            delete(_delivery).where(
                _delivery.c.id.in_(released),
                _delivery.c.status == DeliveryStatus.sending,
                _delivery.c.claimed_at == claimed_at,
            )
        )
        result.released = len(released)
    if result.misconfigured is not None or result.sent:
        # Misconfigured: said once; cleared by the first message the provider takes again.
        mark_channel(session, channel, result.misconfigured, now)
    return result


def _update(
    message: OutgoingMessage,
    status: DeliveryStatus,
    reason: str | None,
    receipt: SendReceipt | None,
    now: datetime,
    claimed_at: datetime,
) -> dict[str, object]:
    return {
        "b_id": message.delivery_id,
        "b_claimed_at": claimed_at,
        "b_status": status,
        "b_reason": None if reason is None else reason[:60],
        "b_pmid": None if receipt is None else receipt.provider_message_id[:255],
        "b_segments": None if receipt is None else receipt.segments,
        "b_sent_at": now if status == DeliveryStatus.sent else None,
    }


def mark_channel(session: Session, channel: Channel, misconfigured: str | None, now: datetime):
    """Reports a channel's provider misconfigured once (health and /readyz show it), and clears
    it with the first send that works again."""
    row = session.get(ChannelProviderSetting, channel.value)
    if row is None:
        return
    state = "ok" if misconfigured is None else "misconfigured"
    if row.state == state and (misconfigured is None or row.state_detail == misconfigured[:1000]):
        return
    if misconfigured is not None:
        log.error("provider misconfigured", channel=channel.value, detail=misconfigured)
    detail = None if misconfigured is None else misconfigured[:1000]
    row.state, row.state_detail, row.state_at = state, detail, now
    session.add(row)


def _unsubscribe(session: Session, message: OutgoingMessage, rejected: ProviderRejected) -> None:
    """The recipient told the carrier STOP (Twilio 21610): Herald's consent follows."""
    profile = session.get(Profile, message.profile_id)
    if profile is None:
        return
    source = f"provider:{rejected.provider_code or 'unsubscribed'}"
    set_consent(session, profile, message.channel, ConsentStatus.unsubscribed, source)


def _drop_push_tokens(session: Session, profile_id: str, dead: Sequence[str]) -> None:
    profile = session.execute(
        select(Profile).where(Profile.id == profile_id).with_for_update()
    ).scalar_one_or_none()
    if profile is None:
        return
    kept = [t for t in profile.push_tokens or [] if t not in set(dead)]
    if kept != (profile.push_tokens or []):
        profile.push_tokens = kept
        session.add(profile)
        log.info("push tokens removed", profile=profile_id, removed=len(dead))
