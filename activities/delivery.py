"""The `deliver` activity: one message to one profile, for flows and campaigns alike.

Everything is decided at send time, in one transaction with the delivery row: whether the run
was exited, channel, address, consent, filters, segment, smart sending, caps and quiet hours.
The row's unique idempotency key makes every retry of a (run, step, profile) return the first
attempt's outcome, so a message is sent at most once.
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
from herald.delivery.channels import (
    ChannelProvider,
    OutgoingMessage,
    ProviderRejected,
    providers_for,
)
from herald.delivery.contract import DeliveryActivitiesContract
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
from herald.delivery.templates import TemplateError, render, template_variables
from herald.flows.conditions import ConditionUnavailable, profile_matches
from herald.profiles.consent import address_for
from herald.segments.membership import is_member
from models.account import Account
from models.campaigns import Campaign
from models.delivery import Delivery
from models.delivery_dto import DeliveryRequest, DeliveryResult
from models.enums import ConsentStatus, DeliveryStatus, EnrollmentStatus
from models.flows import FlowEnrollment
from models.profile import Consent, Profile

log = structlog.get_logger("herald.delivery")

SUBJECT_MAX = 998  # RFC 5322 line limit, and the column's length


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
        providers: Mapping[str, ChannelProvider] | None = None,
        clock: Callable[[], datetime] = activity_now,
    ):
        self.engine = engine
        self.settings = settings
        self.providers = dict(providers) if providers is not None else providers_for(settings)
        self.clock = clock

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
        if request.channel not in self.providers:
            raise ApplicationError(
                f"no provider is configured for channel {request.channel!r}",
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
            return recorded

    def _deliver(self, request: DeliveryRequest) -> DeliveryResult:
        now = self.clock()
        with session_scope(self.engine) as session:
            recorded = recorded_result(session, request.idempotency_key)
            if recorded is not None:
                return recorded
            account = session.get(Account, 1) or Account()
            profile = session.get(Profile, request.profile_id)
            decision = decide(FlowFacts(session, request, account, profile, now), QuietHours.hold)
            if decision.skip is not None:
                return record(session, request, now, DeliveryStatus.skipped, decision.skip)
            if decision.hold_until is not None:
                # Nothing recorded: the workflow sleeps and asks again with the same key.
                return DeliveryResult(status=DeliveryStatus.held, hold_until=decision.hold_until)
            assert profile is not None  # decide() skips a deleted profile
            return self._send(session, request, profile, now)

    def _send(
        self, session: Session, request: DeliveryRequest, profile: Profile, now: datetime
    ) -> DeliveryResult:
        variables = template_variables(profile.model_dump(), request.context)
        try:
            subject = (
                render(request.content.subject, variables) if request.content.subject else None
            )
            body = render(request.content.body, variables)
        except TemplateError as exc:
            log.warning("template error", key=request.idempotency_key, error=str(exc))
            return record(session, request, now, DeliveryStatus.failed, FailReason.template_error)
        if subject is not None:
            # A line break in a subject would start a new mail header.
            subject = " ".join(subject.split())[:SUBJECT_MAX]

        provider = self.providers[request.channel]
        address = address_for(profile, request.channel)
        # Push fans out to every token in the provider; the row names the first.
        to_address = address[0] if isinstance(address, list) else address
        assert to_address  # decide() skips a missing address
        delivery = delivery_row(
            request,
            now,
            status=DeliveryStatus.sent,
            provider=provider.name,
            to_address=to_address,
            subject=subject,
            sent_at=now,
        )
        session.add(delivery)
        # Claims the idempotency key before anything leaves: a concurrent attempt with the same
        # key blocks on this row (PostgreSQL) or on the write lock (SQLite) until we finish.
        session.flush()
        message = OutgoingMessage(
            delivery_id=delivery.id,
            idempotency_key=request.idempotency_key,
            profile_id=profile.id,
            channel=request.channel,
            to_address=to_address,
            subject=subject,
            body=body,
            sender=request.content.sender,
            tracking={
                "$delivery_id": delivery.id,
                "run_kind": request.run_kind,
                "run_id": request.run_id,
                "step_id": request.step_id,
            },
        )
        # The outbox writes its row in this transaction. An external provider (SMTP) is called
        # while the key is claimed but uncommitted: it commits only once the server accepted the
        # message, and ProviderUnavailable rolls everything back so Temporal retries. What is
        # left: a crash between the server's accept and our commit leaves no row, so the retry
        # sends again. The retry carries the same Message-ID (derived from the idempotency key),
        # which lets receivers that dedupe on it (Gmail does) drop the second copy; closing the
        # window entirely would need a provider API that takes an idempotency key. On SQLite the
        # SMTP exchange holds the database's write lock (bounded by smtp_timeout_seconds); on
        # PostgreSQL only this key and the enrollment row are locked.
        try:
            delivery.provider_message_id = provider.send(session, message)
        except ProviderRejected as exc:
            log.warning("provider rejected", key=request.idempotency_key, error=str(exc))
            delivery.status, delivery.reason, delivery.sent_at = (
                DeliveryStatus.failed,
                FailReason.provider_rejected,
                None,
            )
        return result_of(delivery)


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
            Delivery.status == DeliveryStatus.sent,
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
            Delivery.status == DeliveryStatus.sent,
            Delivery.sent_at > now - WEEK,
        )
    ).one()
    return int(day), int(week)


def recorded_result(session: Session, idempotency_key: str) -> DeliveryResult | None:
    row = session.execute(
        select(Delivery).where(Delivery.idempotency_key == idempotency_key)
    ).scalar_one_or_none()
    return None if row is None else result_of(row)


def record(
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
        status=delivery.status,  # type: ignore[arg-type]  # sent | skipped | failed
        reason=delivery.reason,
        delivery_id=delivery.id,
    )
