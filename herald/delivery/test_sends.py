"""Test sends: a campaign message or flow message step delivered now to an operator's address,
marked `test` and counted nowhere.

The message is rendered as its real send would render it (herald/delivery/message_trials.py),
for a chosen profile or an empty one, and goes to that profile's address or to a raw one,
through the channel's configured provider (herald/delivery/provider_settings.py, as the worker
resolves it; the outbox when none is). Consent, smart sending, caps, quiet hours and exit state
are not asked, since the address is the operator's, but a missing address is refused.

The send path is the worker's (herald/delivery/send_path.py): the delivery row is claimed
(`sending`, key `test:<delivery id>`, `test` true) and committed, the provider is called with no
transaction open, and its answer recorded. Reports, journey results, engagement, smart sending,
caps and a campaign's "anything sent" check all leave `test` rows out. A send the provider could
not take now, or refused the credentials for, leaves no row and answers 503 / 502. Test sends
are not paced: one message does not need a slot of the provider's rate.
"""

import asyncio
from dataclasses import replace

import structlog
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.errors import ChannelMisconfigured, ChannelUnavailable, Invalid
from herald.core.ids import new_id
from herald.delivery.channels import OutboxProvider
from herald.delivery.message_trials import (
    MessageLoader,
    TrialMessage,
    chosen_profile,
    render_for,
)
from herald.delivery.provider_settings import build, current
from herald.delivery.providers.base import (
    OutgoingMessage,
    Provider,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendOutcome,
    SendReceipt,
)
from herald.delivery.send_path import record
from herald.delivery.sms_segments import SEGMENTED_CHANNELS, sms_segments
from herald.profiles.consent import address_for
from herald.profiles.normalize import normalize_email, normalize_phone
from models.delivery import Delivery
from models.enums import Channel, DeliveryStatus
from models.preview_dto import TestSendIn, TestSendPublic
from models.profile import Profile
from models.types import utcnow

log = structlog.get_logger("herald.delivery")

# A provider's own timeouts answer first; this only bounds a request that hangs regardless.
SEND_TIMEOUT_SECONDS = 25.0
_NEEDS = {
    Channel.email: "email address",
    Channel.sms: "phone number",
    Channel.whatsapp: "phone number",
    Channel.push: "push token",
}


async def send_test(
    engine: Engine, settings: Settings, load: MessageLoader, request: TestSendIn
) -> TestSendPublic:
    """Sends the message now and answers its delivery; raises a DomainError for bad input (422,
    404) and for a provider that could not take it (503) or refused the credentials (502)."""
    if request.profile_id is None and request.to is None:
        raise Invalid("profile_id", "give profile_id (its address), to (a raw address), or both")
    claimed = await asyncio.to_thread(_claim, engine, settings, load, request)
    if isinstance(claimed, TestSendPublic):  # the outbox took it in the claim's transaction
        return claimed
    provider, message, owner = claimed
    try:
        [outcome] = await asyncio.wait_for(provider.send_many([message]), SEND_TIMEOUT_SECONDS)
    except TimeoutError:
        await asyncio.to_thread(_mark_unknown, engine, message.delivery_id)
        raise ChannelUnavailable(
            f"{provider.name} did not answer within {SEND_TIMEOUT_SECONDS:.0f} s; the message "
            f"may have left: delivery {message.delivery_id} is marked unknown"
        ) from None
    except BaseException:
        # No retry will come to resolve a claim left `sending`: say the outcome is unknown.
        await asyncio.to_thread(_mark_unknown, engine, message.delivery_id)
        raise
    finally:
        await provider.aclose()
    # The consequences the send path draws for a profile (a carrier's STOP, a dead push token)
    # belong to the profile only when the address was its own.
    recorded_as = replace(message, profile_id=owner or "")
    await asyncio.to_thread(_record, engine, message.channel, recorded_as, outcome)
    return _answer(provider.name, message, outcome)


def _claim(
    engine: Engine, settings: Settings, load: MessageLoader, request: TestSendIn
) -> TestSendPublic | tuple[Provider, OutgoingMessage, str | None]:
    """Finds, renders and claims (the send path's step 1). Answers at once for the outbox."""
    with session_scope(engine) as session:
        trial = load(session)
        profile = chosen_profile(session, request.profile_id)
        to, tokens, own = _address(trial.channel, profile, request.to)
        rendered = render_for(trial, profile)
        name, config, _ = current(session, trial.channel, settings)
        provider = build(name, config, settings)
        delivery = _delivery_row(trial, profile, provider.name, to)
        delivery.subject = rendered.subject
        if trial.channel in SEGMENTED_CHANNELS:
            delivery.segments = sms_segments(rendered.body).segments
        session.add(delivery)
        session.flush()
        message = OutgoingMessage(
            delivery_id=delivery.id,
            idempotency_key=delivery.idempotency_key,
            profile_id=delivery.profile_id,
            channel=trial.channel,
            to_address=to,
            subject=rendered.subject,
            body=rendered.body,
            text=rendered.text,
            sender=trial.content.sender,
            sender_name=trial.content.sender_name,
            reply_to=trial.content.reply_to,
            template=rendered.template,
            push_tokens=tokens,
            tracking={
                "$delivery_id": delivery.id,
                "run_kind": trial.run_kind,
                "run_id": trial.run_id,
                "step_id": trial.step_id,
            },
            test=True,
        )
        log.info("test send", delivery=delivery.id, run=trial.run_id, step=trial.step_id)
        if isinstance(provider, OutboxProvider):
            delivery.provider_message_id = provider.send(session, message)
            delivery.status = DeliveryStatus.sent
            session.add(delivery)
            return TestSendPublic(
                id=delivery.id,
                status="sent",
                reason=None,
                to=to,
                provider=provider.name,
                provider_message_id=delivery.provider_message_id,
            )
    return provider, message, (profile.id if profile is not None and own else None)


def _delivery_row(trial: TrialMessage, profile: Profile | None, provider: str, to: str) -> Delivery:
    delivery_id = new_id("dl")
    now = utcnow()
    return Delivery(
        id=delivery_id,
        idempotency_key=f"test:{delivery_id}",
        run_kind=trial.run_kind,
        run_id=trial.run_id,
        step_id=trial.step_id,
        # The profile it was rendered for, so erasing that profile clears the row too; "" when
        # rendered for nobody.
        profile_id=profile.id if profile is not None else "",
        channel=trial.channel,
        status=DeliveryStatus.sending,
        transactional=trial.transactional,
        provider=provider,
        to_address=to,
        created_at=now,
        sent_at=now,
        claimed_at=now,
        test=True,
    )


def _address(
    channel: Channel, profile: Profile | None, to: str | None
) -> tuple[str, tuple[str, ...], bool]:
    """(address, push tokens, whether the address is the profile's own)."""
    if to is not None:
        address = _raw_address(channel, to)
        own = profile is not None and address in _addresses_of(profile, channel)
        return address, ((address,) if channel is Channel.push else ()), own
    assert profile is not None  # send_test requires one of the two
    found = address_for(profile, channel)
    if not found:
        raise Invalid(
            "profile_id", f"profile {profile.id!r} has no {_NEEDS[channel]} ({channel.value})"
        )
    if isinstance(found, list):  # push: every token, the row names the first
        return found[0], tuple(found), True
    return found, (), True


def _raw_address(channel: Channel, to: str) -> str:
    try:
        if channel is Channel.email:
            return normalize_email(to)
        if channel in (Channel.sms, Channel.whatsapp):
            return normalize_phone(to.removeprefix("whatsapp:"))
    except ValueError as exc:
        raise Invalid("to", str(exc)) from None
    if not to.strip():
        raise Invalid("to", "a push token cannot be blank")
    return to.strip()


def _addresses_of(profile: Profile, channel: Channel) -> list[str]:
    found = address_for(profile, channel)
    return found if isinstance(found, list) else [found] if found else []


def _record(
    engine: Engine, channel: Channel, message: OutgoingMessage, outcome: SendOutcome
) -> None:
    with session_scope(engine) as session:
        # A test send has one attempt: its claim is the row's own.
        row = session.get(Delivery, message.delivery_id)
        claimed_at = row.claimed_at if row is not None and row.claimed_at else utcnow()
        record(session, channel, [message], [outcome], utcnow(), claimed_at)


def _mark_unknown(engine: Engine, delivery_id: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id) == delivery_id, col(Delivery.status) == DeliveryStatus.sending)
            .values(status=DeliveryStatus.unknown)
        )


def _answer(provider: str, message: OutgoingMessage, outcome: SendOutcome) -> TestSendPublic:
    """The recorded outcome as the API answers it; no row was kept for the two errors."""
    if isinstance(outcome, ProviderMisconfigured):
        raise ChannelMisconfigured(f"{provider} refused Herald's credentials: {outcome.detail}")
    if isinstance(outcome, ProviderUnavailable):
        raise ChannelUnavailable(
            f"{provider} could not take the message now: {outcome.detail}", outcome.retry_after
        )
    rejected = isinstance(outcome, ProviderRejected)
    return TestSendPublic(
        id=message.delivery_id,
        status="failed" if rejected else "sent",
        reason=outcome.reason[:60] if isinstance(outcome, ProviderRejected) else None,
        to=message.to_address,
        provider=provider,
        provider_message_id=(
            outcome.provider_message_id[:255] if isinstance(outcome, SendReceipt) else None
        ),
    )
