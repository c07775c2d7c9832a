"""The `deliver` activity: one message to one profile, for flows and test sends.

Everything is decided at send time, in one transaction that also claims the delivery row:
whether the run was exited, channel, address, consent, filters, segment, smart sending, caps and
quiet hours (herald/delivery/policy.py `decide`, the same as the campaign page sender's). The
provider is then called with no transaction open and its answer recorded after
(herald/delivery/send_path.py). The row's unique idempotency key makes every retry of a (run,
step, profile) return the first attempt's outcome; a claim a dead attempt left `sending` is
resolved by the channel's guarantee (herald/delivery/guarantees.py).
"""

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cached_property
from typing import Any

import structlog
from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from herald.campaigns.audience import exit_metric_id, exited_condition
from herald.core.clock import activity_now
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.delivery.channels import OutboxProvider
from herald.delivery.contract import DeliveryActivitiesContract
from herald.delivery.guarantees import guarantee_for
from herald.delivery.pace import send_paced
from herald.delivery.policy import (
    DAY,
    QUIET_HOURS_CHANNELS,
    WEEK,
    FailReason,
    QuietHours,
    cap_reached,
    decide,
    parse_clock,
    quiet_hours_end,
    recently_messaged,
    smart_sending_window,
    zone_or,
)
from herald.delivery.provider_hub import AnyProvider, ProviderHub
from herald.delivery.providers.base import OutgoingMessage, Provider, ProviderRejected
from herald.delivery.rendering import render_content
from herald.delivery.send_path import (
    PROVIDER_UNAVAILABLE,
    claim_is_stale,
    record,
    wait_for_claim,
)
from herald.delivery.sms_segments import SEGMENTED_CHANNELS, sms_segments
from herald.delivery.templates import TemplateError, template_variables
from herald.flows.conditions import ConditionUnavailable, profile_matches
from herald.profiles.consent import address_for
from herald.segments.membership import is_member
from models.account import Account
from models.campaigns import Campaign
from models.delivery import Delivery
from models.delivery_dto import DeliveryRequest, DeliveryResult
from models.enums import ConsentStatus, DeliveryStatus, EnrollmentStatus, Guarantee
from models.flows import FlowEnrollment
from models.profile import Consent, Profile
from models.types import utcnow

log = structlog.get_logger("herald.delivery")

# One message: it starts within this (a paced channel may wait for its slot) and ends within
# herald/delivery/pace.py CHUNK_GRACE after, inside the activity's 30 s start-to-close timeout.
SEND_TIMEOUT_SECONDS = 15.0
# Smart sending and caps count what may have reached the recipient, not only what surely did.
COUNTS_AS_SENT = (DeliveryStatus.sent, DeliveryStatus.sending, DeliveryStatus.unknown)


def campaign_exited(session: Session, request: DeliveryRequest) -> bool:
    """Has the profile left this campaign (exit criteria met, removed by an operator)?

    The same rule as the bulk sender's (herald/campaigns/audience.py `exited_condition`): an exit
    row, or a conversion event at or after the campaign's start. An unknown campaign exits nobody.
    """
    campaign = session.execute(
        select(Campaign.exit_metric, Campaign.started_at).where(Campaign.id == request.run_id)
    ).first()
    if campaign is None or campaign.started_at is None:
        return False
    metric_id = None
    if campaign.exit_metric:
        metric_id = session.execute(exit_metric_id(campaign.exit_metric)).scalar()
    condition = exited_condition(request.run_id, metric_id, campaign.started_at, request.profile_id)
    return bool(session.execute(select(condition)).scalar())


def flow_exited(session: Session, workflow_id: str) -> bool:
    """Has the enrollment ended or been marked exited (conversion, operator, filter)?"""
    stmt = select(FlowEnrollment.status, FlowEnrollment.exit_reason).where(
        FlowEnrollment.workflow_id == workflow_id
    )
    # A shared row lock (PostgreSQL; SQLite serialises writers anyway) makes a concurrent exit
    # wait for this send to commit, or this send see that exit: never both "running".
    row = session.execute(stmt.with_for_update(read=True)).first()
    # No row: the enrollment was deleted or never recorded, so it may not be messaged.
    return row is None or row.exit_reason is not None or row.status != EnrollmentStatus.running


class DeliveryActivities(DeliveryActivitiesContract):
    """The shared delivery pipeline; the worker wires the engine, settings and providers."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        providers: Mapping[str, AnyProvider] | None = None,
        hub: ProviderHub | None = None,
        clock: Callable[[], datetime] = activity_now,
        wall: Callable[[], datetime] = utcnow,
    ):
        self.engine = engine
        self.settings = settings
        self.hub = hub or ProviderHub(settings, fixed=providers)
        self.clock = clock  # the policies' time (simulated under the time-skipping server)
        self.wall = wall  # real time, for claims: how long an attempt lives is real

    @activity.defn(name="deliver")
    def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        """Sends, skips (recorded with its reason), fails (recorded) or holds (recorded later).

        Raises only for transient trouble (database, provider unavailable), so that Temporal
        retries; every retry returns the first recorded outcome.
        """
        if request.run_kind == "flow" and not request.workflow_id:
            raise ApplicationError(
                "a flow delivery needs the enrollment's workflow_id",
                type="InvalidDeliveryRequest",
                non_retryable=True,
            )
        try:
            return self._deliver(request)
        except ConditionUnavailable as exc:
            raise ApplicationError(
                str(exc), type="ConditionUnavailable", non_retryable=True
            ) from exc
        except IntegrityError:
            # A concurrent attempt with the same key committed first: its outcome is ours.
            with session_scope(self.engine) as session:
                recorded = recorded_result(session, request.idempotency_key)
            if recorded is None:
                raise
            if recorded.status == DeliveryStatus.sending:
                raise ApplicationError(
                    "another attempt is sending this message; asking again for its outcome",
                    type=PROVIDER_UNAVAILABLE,
                ) from None
            return recorded

    def _deliver(self, request: DeliveryRequest) -> DeliveryResult:
        now, claimed_at = self.clock(), self.wall()
        with session_scope(self.engine) as session:
            step = self._claim(session, request, now, claimed_at)
        if isinstance(step, DeliveryResult):
            return step
        # The claim is committed; the provider is called with no transaction open.
        provider, message = step
        [outcome] = send_paced(
            self.engine, self.hub, provider, request.channel, [message], SEND_TIMEOUT_SECONDS
        )
        with session_scope(self.engine) as session:
            recorded = record(session, request.channel, [message], [outcome], now, claimed_at)
        recorded.raise_for_retry()
        return DeliveryResult(
            status=recorded.outcomes[message.delivery_id],
            reason=outcome.reason if isinstance(outcome, ProviderRejected) else None,
            delivery_id=message.delivery_id,
        )

    def _claim(
        self, session: Session, request: DeliveryRequest, now: datetime, claimed_at: datetime
    ) -> DeliveryResult | tuple[Provider, OutgoingMessage]:
        """Decides, renders and claims (send path step 1), or answers at once: an outcome
        recorded earlier, a skip, a hold, a template error, or a message the outbox took in
        this very transaction."""
        prior = recorded_row(session, request.idempotency_key)
        account = session.get(Account, 1) or Account()
        if prior is not None and prior.status != DeliveryStatus.sending:
            return result_of(prior)
        profile = session.get(Profile, request.profile_id)
        if prior is not None:
            # Claimed and never recorded. A young claim's attempt may still be sending: wait.
            if not claim_is_stale(prior.claimed_at, claimed_at):
                raise wait_for_claim(prior.claimed_at, claimed_at)
            # Its attempt is gone: the channel's guarantee says resend or leave it unknown, and
            # a resend still has to be allowed now (exit, consent, filters, segment).
            chosen = guarantee_for(
                account.delivery_guarantees, request.channel, request.transactional
            )
            blocked = decide(ResendFacts(session, request, account, profile, now), QuietHours.skip)
            if chosen is Guarantee.at_most_once or blocked.skip is not None:
                prior.status, prior.reason = DeliveryStatus.unknown, blocked.skip
                session.add(prior)
                log.warning("delivery outcome unknown", key=request.idempotency_key)
                return result_of(prior)
        else:
            decision = decide(FlowFacts(session, request, account, profile, now), QuietHours.hold)
            if decision.skip is not None:
                return record_unsent(session, request, now, DeliveryStatus.skipped, decision.skip)
            if decision.hold_until is not None:
                # Nothing recorded: the workflow sleeps and asks again with the same key.
                return DeliveryResult(status=DeliveryStatus.held, hold_until=decision.hold_until)
        assert profile is not None  # decide() skips a deleted profile
        return self._render_and_claim(session, request, profile, prior, now, claimed_at)

    def _render_and_claim(
        self,
        session: Session,
        request: DeliveryRequest,
        profile: Profile,
        prior: Delivery | None,
        now: datetime,
        claimed_at: datetime,
    ) -> DeliveryResult | tuple[Provider, OutgoingMessage]:
        variables = template_variables(profile.model_dump(), request.context)
        try:
            rendered = render_content(request.content, variables)
        except TemplateError as exc:
            log.warning("template error", key=request.idempotency_key, error=str(exc))
            if prior is not None:
                prior.status, prior.reason = DeliveryStatus.failed, FailReason.template_error
                session.add(prior)
                return result_of(prior)
            return record_unsent(
                session, request, now, DeliveryStatus.failed, FailReason.template_error
            )
        provider = self.hub.provider(session, request.channel)
        address = address_for(profile, request.channel)
        tokens = tuple(address) if isinstance(address, list) else ()
        # Push fans out to every token in the provider; the row names the first.
        to_address = tokens[0] if tokens else address
        assert isinstance(to_address, str) and to_address  # decide() skips a missing address
        delivery = prior or delivery_row(request, now)
        delivery.status, delivery.provider, delivery.sent_at = (
            DeliveryStatus.sending,
            provider.name,
            now,
        )
        delivery.claimed_at = claimed_at
        delivery.to_address, delivery.subject = to_address, rendered.subject
        if request.channel in SEGMENTED_CHANNELS:
            delivery.segments = sms_segments(rendered.body).segments
        session.add(delivery)
        # Claims the idempotency key: a concurrent attempt with the same key blocks on this row
        # (PostgreSQL) or on the write lock (SQLite) and then finds it.
        session.flush()
        message = OutgoingMessage(
            delivery_id=delivery.id,
            idempotency_key=request.idempotency_key,
            profile_id=profile.id,
            channel=request.channel,
            to_address=to_address,
            subject=rendered.subject,
            body=rendered.body,
            text=rendered.text,
            sender=request.content.sender,
            sender_name=request.content.sender_name,
            reply_to=request.content.reply_to,
            template=rendered.template,
            push_tokens=tokens,
            tracking={
                "$delivery_id": delivery.id,
                "run_kind": request.run_kind,
                "run_id": request.run_id,
                "step_id": request.step_id,
            },
        )
        if isinstance(provider, OutboxProvider):
            # The embedded outbox "sends" by writing its row in this same transaction.
            delivery.provider_message_id = provider.send(session, message)
            delivery.status = DeliveryStatus.sent
            return result_of(delivery)
        return provider, message


class ResendFacts:
    """What a resend of a dead attempt's claim re-checks: whether sending is still allowed.
    Smart sending, caps and quiet hours were passed when the message was first claimed."""

    recently_messaged = False
    cap_reached = False
    quiet_hours_end = None

    def __init__(self, *args: Any) -> None:
        self._facts = FlowFacts(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._facts, name)


class FlowFacts:
    """The facts of one message as the deliver activity finds them, each read when `decide`
    first asks for it: a message skipped for consent runs no filter or history query."""

    def __init__(
        self,
        session: Session,
        request: DeliveryRequest,
        account: Account,
        profile: Profile | None,
        now: datetime,
    ) -> None:
        self.session, self.request, self.account, self.profile, self.now = (
            session,
            request,
            account,
            profile,
            now,
        )

    @cached_property
    def exited(self) -> bool:
        if self.request.run_kind == "flow":
            assert self.request.workflow_id is not None
            return flow_exited(self.session, self.request.workflow_id)
        return campaign_exited(self.session, self.request)

    @cached_property
    def channel_enabled(self) -> bool:
        return self.request.channel in self.account.enabled_channels

    @cached_property
    def profile_exists(self) -> bool:
        return self.profile is not None

    @property
    def _profile(self) -> Profile:
        assert self.profile is not None  # decide() reads profile_exists first
        return self.profile

    @cached_property
    def has_address(self) -> bool:
        return bool(address_for(self._profile, self.request.channel))

    @cached_property
    def subscribed(self) -> bool:
        consent = self.session.get(Consent, (self._profile.id, self.request.channel))
        return consent is not None and consent.status == ConsentStatus.subscribed

    @cached_property
    def passes_filters(self) -> bool:
        filters = self.request.filters
        return not filters or profile_matches(self.session, self._profile.id, filters, self.now)

    @cached_property
    def in_segment(self) -> bool:
        segment_id = self.request.segment_id
        return not segment_id or is_member(self.session, segment_id, self._profile.id, self.now)

    @cached_property
    def recently_messaged(self) -> bool:
        if not self.request.smart_sending:
            return False
        channel = self.request.channel
        window = smart_sending_window(channel, self.account.smart_sending_hours)
        last = last_sent_at(self.session, self._profile.id, channel, self.now - window)
        return recently_messaged(last, self.now, window)

    @cached_property
    def cap_reached(self) -> bool:
        caps = self.account.frequency_caps.get(self.request.channel)
        if not caps or self.request.transactional:
            return False
        day, week = sends_in_last_day_and_week(
            self.session, self._profile.id, self.request.channel, self.now
        )
        return cap_reached(caps, day, week)

    @cached_property
    def quiet_hours_end(self) -> datetime | None:
        if self.request.channel not in QUIET_HOURS_CHANNELS:
            return None
        return quiet_hours_end(
            self.now,
            zone_or(self._profile.timezone, self.account.timezone),
            parse_clock(self.account.quiet_hours_start),
            parse_clock(self.account.quiet_hours_end),
        )


def last_sent_at(
    session: Session, profile_id: str, channel: str, since: datetime
) -> datetime | None:
    return session.execute(
        select(func.max(Delivery.sent_at)).where(
            Delivery.profile_id == profile_id,
            Delivery.channel == channel,
            Delivery.status.in_(COUNTS_AS_SENT),
            Delivery.test.is_(False),
            Delivery.sent_at > since,
        )
    ).scalar()


def sends_in_last_day_and_week(
    session: Session, profile_id: str, channel: str, now: datetime
) -> tuple[int, int]:
    day, week = session.execute(
        select(
            func.coalesce(func.sum(case((Delivery.sent_at > now - DAY, 1), else_=0)), 0),
            func.count(),
        ).where(
            Delivery.profile_id == profile_id,
            Delivery.channel == channel,
            Delivery.status.in_(COUNTS_AS_SENT),
            Delivery.test.is_(False),
            Delivery.sent_at > now - WEEK,
        )
    ).one()
    return int(day), int(week)


def recorded_row(session: Session, idempotency_key: str) -> Delivery | None:
    return session.execute(
        select(Delivery).where(Delivery.idempotency_key == idempotency_key)
    ).scalar_one_or_none()


def recorded_result(session: Session, idempotency_key: str) -> DeliveryResult | None:
    row = recorded_row(session, idempotency_key)
    return None if row is None else result_of(row)


def record_unsent(
    session: Session,
    request: DeliveryRequest,
    now: datetime,
    status: DeliveryStatus,
    reason: str,
) -> DeliveryResult:
    """A delivery row for a message that was not sent (skipped or failed before the provider)."""
    delivery = delivery_row(request, now, status=status, reason=reason)
    session.add(delivery)
    session.flush()
    return result_of(delivery)


def delivery_row(request: DeliveryRequest, now: datetime, **fields: Any) -> Delivery:
    """The delivery row of `request`, claiming its idempotency key once added."""
    fields.setdefault("status", DeliveryStatus.sending)
    return Delivery(
        id=new_id("dl"),
        idempotency_key=request.idempotency_key,
        run_kind=request.run_kind,
        run_id=request.run_id,
        step_id=request.step_id,
        workflow_id=request.workflow_id,
        profile_id=request.profile_id,
        channel=request.channel,
        transactional=request.transactional,
        created_at=now,
        **fields,
    )


def result_of(delivery: Delivery) -> DeliveryResult:
    return DeliveryResult(
        status=delivery.status,  # type: ignore[arg-type]  # sent | skipped | failed | unknown
        reason=delivery.reason,
        delivery_id=delivery.id,
    )
