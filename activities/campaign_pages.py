"""Sending one page of a campaign message's recipients, in one transaction.

The path workflow (workflows/campaigns.py) carries only counts and a cursor; recipients are
resolved here, page by page, with set-based SQL (herald/campaigns/audience.py), and a whole page is
decided, rendered and recorded in ONE transaction: one query for the page (each row with its
consent, exit state, this message's earlier outcome, and the recent sends smart sending and caps
need, all correlated index lookups), one multi-row insert of delivery rows, one of outbox rows
and one update linking them. The policy is the deliver activity's: both call
herald/delivery/policy.py `decide`, this one with facts from the page query. Wave planning is
pure and lives in herald/campaigns/waves.py.

With an external provider (SMTP, Twilio, ...) the page's sends are claimed (`sending`) in that
transaction and returned; the activity sends them after commit, concurrently within the
provider's limits, and records the answers in a second transaction
(herald/delivery/send_path.py). A claim a dead attempt left `sending` is, on the retry, sent
again or marked `unknown` as the channel's guarantee says (herald/delivery/guarantees.py).

Exactly once: every row's idempotency key is `campaign:<campaign>:<message>:<profile>` (unique
in `delivery`). A page holds its message's row lock (PostgreSQL; SQLite's BEGIN IMMEDIATE
serialises all writers), so attempts at the same message never interleave; the page query sees
the rows earlier attempts committed. A retried page (same request) finds the rows its earlier
attempt committed, reports their recorded outcome and sends nothing again; rows from earlier
pages or waves (recorded before this request's `now`) are left out of the page, so a wave may
start its cursor anywhere and still never repeat anyone. The insert is ON CONFLICT DO NOTHING
and its count is checked: a key taken after all rolls the page back (nothing sent) for a retry.

Differences from the per-message `deliver` activity, by design:
- Quiet hours skip (reason `quiet_hours`) instead of holding: a campaign message belongs to
  its send time, and holding thousands of recipients would need per-recipient timers. Schedule
  SMS/WhatsApp waves outside the window (local-time sends do that per recipient).
- `now` is the workflow's time (`req.now`), so every policy follows the workflow's clock.
- A recipient's unknown timezone means the campaign's (for waves and quiet hours alike).
"""

from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import (
    String,
    and_,
    bindparam,
    cast,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlmodel import Session
from temporalio.exceptions import ApplicationError

from activities.delivery import COUNTS_AS_SENT
from herald.campaigns.audience import (
    conversions,
    converted_since,
    exit_metric_id,
    exit_recorded,
    timezone_condition,
)
from herald.campaigns.contract import (
    MessageSnapshot,
    PageRequest,
    PageResult,
    path_workflow_id,
)
from herald.campaigns.transitions import MESSAGE_FROM
from herald.campaigns.waves import campaign_zone, effective_zone, idempotency_key
from herald.core.ids import new_id
from herald.core.sql import insert_ignoring_conflicts
from herald.delivery.channels import OutboxProvider
from herald.delivery.guarantees import guarantee_for
from herald.delivery.policy import (
    DAY,
    QUIET_HOURS_CHANNELS,
    WEEK,
    Facts,
    FailReason,
    QuietHours,
    cap_reached,
    decide,
    parse_clock,
    quiet_hours_end,
    recently_messaged,
    smart_sending_window,
)
from herald.delivery.provider_hub import AnyProvider
from herald.delivery.providers.base import OutgoingMessage
from herald.delivery.rendering import render_content
from herald.delivery.send_path import claim_is_stale, wait_for_claim
from herald.delivery.sms_segments import SEGMENTED_CHANNELS, sms_segments
from herald.delivery.templates import TemplateError, template_variables
from herald.profiles.consent import address_for
from models.account import Account
from models.campaigns import Campaign, CampaignExit, CampaignMessage
from models.delivery import Delivery, OutboxMessage
from models.enums import CampaignStatus, ConsentStatus, DeliveryStatus, Guarantee, MessageStatus
from models.profile import Consent, Profile

log = structlog.get_logger("herald.campaigns")


_profile = Profile.__table__
_consent = Consent.__table__
_delivery = Delivery.__table__
_outbox = OutboxMessage.__table__
_campaign = Campaign.__table__
_message = CampaignMessage.__table__
_exit = CampaignExit.__table__


class _Page:
    """Outcomes of one page, counted as the PageResult reports them."""

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.unknown = 0
        self.skipped: Counter[str] = Counter()

    def count(self, status: str, reason: str | None) -> None:
        if status == DeliveryStatus.sent:
            self.sent += 1
        elif status == DeliveryStatus.failed:
            self.failed += 1
        elif status == DeliveryStatus.unknown:
            self.unknown += 1
        else:
            self.skipped[str(reason)] += 1


class _PageFacts:
    """The delivery facts of page rows: the page query's columns (exit, consent, recent sends)
    plus the account's settings, for herald/delivery/policy.py `decide`."""

    def __init__(
        self, message: MessageSnapshot, account: Account, fallback_zone: str, now: datetime
    ) -> None:
        self.channel, self.account, self.fallback_zone, self.now = (
            message.channel,
            account,
            fallback_zone,
            now,
        )
        self.window = PageSender._smart_window(message, account)
        self.caps = account.frequency_caps.get(message.channel)
        self.quiet = message.channel in QUIET_HOURS_CHANNELS
        self.quiet_start = parse_clock(account.quiet_hours_start)
        self.quiet_end = parse_clock(account.quiet_hours_end)
        self._zones: dict[str, ZoneInfo] = {}

    def of(self, row) -> Facts:
        return Facts(
            exited=bool(row.exited or row.converted),
            channel_enabled=self.channel in self.account.enabled_channels,
            has_address=bool(address_for(row, self.channel)),
            subscribed=row.consent == ConsentStatus.subscribed,
            recently_messaged=self.window is not None
            and recently_messaged(row.last_sent_at, self.now, self.window),
            cap_reached=bool(self.caps)
            and cap_reached(self.caps, row.sent_day or 0, row.sent_week or 0),
            quiet_hours_end=self._quiet_hours_end(row) if self.quiet else None,
        )

    def _quiet_hours_end(self, row) -> datetime | None:
        name = effective_zone(row.timezone, self.fallback_zone)
        zone = self._zones.get(name) or self._zones.setdefault(name, ZoneInfo(name))
        return quiet_hours_end(self.now, zone, self.quiet_start, self.quiet_end)


class PageSender:
    """Decides, renders, records and sends one page (the `send_page` activity's body)."""

    def send(
        self,
        session: Session,
        req: PageRequest,
        message: MessageSnapshot,
        condition,
        provider: AnyProvider,
        wanted: int,
        claimed_at: datetime,
    ) -> tuple[PageResult, list[OutgoingMessage]]:
        """The page's outcome so far, and the messages claimed for an external provider, which
        the caller sends after this transaction commits (herald/delivery/send_path.py)."""
        settings, now, channel = req.settings, req.now, message.channel
        campaign_id = settings.campaign_id
        campaign = session.execute(
            select(_campaign.c.status, _campaign.c.started_at).where(_campaign.c.id == campaign_id)
        ).first()
        if campaign is None or campaign.status == CampaignStatus.cancelled:
            # Deleted or cancelled while this page waited: send nothing more.
            return PageResult(recipients=0, sent=0, done=True), []
        # Serialises attempts at this message's pages (a retry waits for a zombie attempt to
        # finish, then sees its rows); SQLite's BEGIN IMMEDIATE already does.
        session.execute(select(_message.c.id).where(_message.c.id == message.id).with_for_update())
        account = session.get(Account, 1) or Account()
        fallback = campaign_zone(settings)

        rows = session.execute(
            self._page_query(session, req, message, account, condition, campaign.started_at, wanted)
        ).all()
        page = _Page()
        candidates: list[Any] = []
        new_exits: list[str] = []
        deliveries: list[dict[str, Any]] = []
        unknown: list[str] = []
        resend = guarantee_for(account.delivery_guarantees, channel, False)

        facts = _PageFacts(message, account, fallback, now)
        for row in rows:
            if row.prior_status == DeliveryStatus.sending:
                # Claimed, never recorded. A young claim's attempt may still be sending: wait.
                if not claim_is_stale(row.prior_claimed_at, claimed_at):
                    raise wait_for_claim(row.prior_claimed_at, claimed_at)
                # Its attempt is gone: resend (if still allowed) or leave it unknown.
                blocked = decide(_allowed_now(facts.of(row)), QuietHours.skip).skip
                if resend is Guarantee.at_least_once and blocked is None:
                    candidates.append(row)
                else:
                    unknown.append((row.prior_id, blocked))
                    page.count(DeliveryStatus.unknown, None)
                continue
            if row.prior_status is not None:
                # This page's earlier attempt recorded it: report that outcome, send nothing.
                page.count(row.prior_status, row.prior_reason)
                continue
            decision = decide(facts.of(row), QuietHours.skip)
            if decision.skip is None:
                candidates.append(row)
                continue
            if row.converted and not row.exited:
                new_exits.append(row.id)
            deliveries.append(
                self._row(req, message, row.id, DeliveryStatus.skipped, decision.skip, now)
            )

        if new_exits and campaign.started_at is not None:
            self._record_exits(session, campaign_id, req, campaign.started_at, new_exits)

        if unknown:
            log.warning("delivery outcomes unknown", campaign=campaign_id, count=len(unknown))
            session.execute(
                update(_delivery)
                .where(
                    _delivery.c.id == bindparam("b_id"),
                    _delivery.c.status == DeliveryStatus.sending,
                )
                .values(status=DeliveryStatus.unknown, reason=bindparam("b_reason")),
                [{"b_id": i, "b_reason": None if r is None else str(r)} for i, r in unknown],
            )
        external = not isinstance(provider, OutboxProvider)
        outgoing: list[tuple[dict[str, Any], str]] = []  # (delivery row, body)
        context = {"campaign": {"id": campaign_id, "name": settings.name}}
        content = message.content
        for row in candidates:
            variables = template_variables(row._mapping, context)
            try:
                rendered = render_content(content, variables)
            except TemplateError as exc:
                log.warning("template error", campaign=campaign_id, error=str(exc))
                failed = self._row(
                    req, message, row.id, DeliveryStatus.failed, FailReason.template_error, now
                )
                if row.prior_id is not None:  # a dead attempt's claim: it fails in place
                    failed.update(id=row.prior_id, resend=True)
                deliveries.append(failed)
                continue
            address = address_for(row, channel)
            status = DeliveryStatus.sending if external else DeliveryStatus.sent
            sent = self._row(req, message, row.id, status, None, now)
            sent.update(
                provider=provider.name,
                to_address=address[0] if isinstance(address, list) else address,
                push_tokens=tuple(address) if isinstance(address, list) else (),
                subject=rendered.subject,
                sent_at=now,
                claimed_at=claimed_at if external else None,
                rendered=rendered,
            )
            if channel in SEGMENTED_CHANNELS:
                sent["segments"] = sms_segments(rendered.body).segments
            if row.prior_id is not None:  # resent under the dead attempt's claim
                sent.update(id=row.prior_id, resend=True)
            deliveries.append(sent)
            outgoing.append((sent, rendered.body))

        pending = self._record(session, req, message, provider, deliveries, outgoing, page)
        self._mark_sending(session, campaign_id, message.id, now, len(outgoing))
        result = PageResult(
            recipients=len(rows),
            sent=page.sent,
            skipped=dict(page.skipped),
            failed=page.failed,
            unknown=page.unknown,
            last_profile_id=rows[-1].id if rows else None,
            done=len(rows) < wanted,
        )
        return result, pending

    def _page_query(
        self,
        session: Session,
        req: PageRequest,
        message: MessageSnapshot,
        account: Account,
        condition,
        started_at: datetime | None,
        wanted: int,
    ):
        """The page: audience members after the cursor (in the wave's zones), each with its
        consent, exit state, this message's earlier outcome, and the recent sends on the channel
        that smart sending and caps need (correlated index lookups, so every plan, generic or
        not, stays a walk of the page's rows)."""
        settings, now, channel = req.settings, req.now, message.channel.value
        prior = _delivery.alias("prior")
        key = literal(idempotency_key(settings.campaign_id, message.id, ""), String) + _profile.c.id
        exited = converted = false()
        if started_at is not None:
            exited = exit_recorded(settings.campaign_id, _profile.c.id)
            metric_id = None
            if settings.exit_metric:
                metric_id = session.execute(exit_metric_id(settings.exit_metric)).scalar()
            if metric_id is not None:
                converted = converted_since(metric_id, started_at, _profile.c.id)
        stmt = (
            select(
                _profile.c.id,
                _profile.c.email,
                _profile.c.phone,
                _profile.c.push_tokens,
                _profile.c.first_name,
                _profile.c.last_name,
                _profile.c.timezone,
                _profile.c.properties,
                _consent.c.status.label("consent"),
                prior.c.id.label("prior_id"),
                prior.c.status.label("prior_status"),
                prior.c.claimed_at.label("prior_claimed_at"),
                prior.c.reason.label("prior_reason"),
                exited.label("exited"),
                converted.label("converted"),
                *self._history_columns(message, account, now),
            )
            .select_from(
                _profile.outerjoin(
                    _consent,
                    and_(
                        _consent.c.profile_id == _profile.c.id,
                        _consent.c.channel == channel,
                    ),
                ).outerjoin(prior, prior.c.idempotency_key == key)
            )
            .where(
                condition,
                # Recorded by an earlier page or wave: done. By this request (a retry): report.
                or_(prior.c.id.is_(None), prior.c.created_at >= req.now),
            )
            .order_by(_profile.c.id)
            .limit(wanted)
        )
        if req.after_profile_id is not None:
            stmt = stmt.where(_profile.c.id > req.after_profile_id)
        if req.wave.timezones is not None:
            stmt = stmt.where(timezone_condition(req.wave.timezones, campaign_zone(settings)))
        return stmt

    def _history_columns(self, message: MessageSnapshot, account: Account, now: datetime):
        """last_sent_at (smart sending) and sent_day, sent_week (caps) per page row, when the
        message needs them: the deliver activity's queries, correlated with the profile."""
        columns = []
        channel = message.channel.value

        def sends(since: datetime):
            return and_(
                _delivery.c.profile_id == _profile.c.id,
                _delivery.c.channel == channel,
                _delivery.c.status.in_(COUNTS_AS_SENT),
                _delivery.c.test.is_(False),
                _delivery.c.sent_at > since,
            )

        window = self._smart_window(message, account)
        if window is not None:
            columns.append(
                select(func.max(_delivery.c.sent_at))
                .where(sends(now - window))
                .scalar_subquery()
                .label("last_sent_at")
            )
        if account.frequency_caps.get(message.channel):
            columns.append(
                select(func.count()).where(sends(now - DAY)).scalar_subquery().label("sent_day")
            )
            columns.append(
                select(func.count()).where(sends(now - WEEK)).scalar_subquery().label("sent_week")
            )
        return columns

    def _record_exits(
        self,
        session: Session,
        campaign_id: str,
        req: PageRequest,
        started_at: datetime,
        profile_ids: list[str],
    ) -> None:
        """Exit rows for converters found at send time, so reports list them too."""
        metric_id = session.execute(exit_metric_id(req.settings.exit_metric)).scalar()
        if metric_id is None:
            return
        first: dict[str, dict[str, Any]] = {}
        for profile_id, event_id, time in session.execute(
            conversions(metric_id, started_at, profile_ids)
        ):
            first.setdefault(
                profile_id,
                {
                    "campaign_id": campaign_id,
                    "profile_id": profile_id,
                    "event_id": event_id,
                    "converted_at": time,
                },
            )
        if first:
            session.execute(insert_ignoring_conflicts(session, _exit), list(first.values()))

    @staticmethod
    def _smart_window(message: MessageSnapshot, account: Account) -> timedelta | None:
        if not message.smart_sending:
            return None
        window = smart_sending_window(message.channel, account.smart_sending_hours)
        return window if window > timedelta(0) else None

    @staticmethod
    def _row(
        req: PageRequest,
        message: MessageSnapshot,
        profile_id: str,
        status: DeliveryStatus,
        reason: str | None,
        now: datetime,
    ) -> dict[str, Any]:
        campaign_id = req.settings.campaign_id
        return {
            "id": new_id("dl"),
            "idempotency_key": idempotency_key(campaign_id, message.id, profile_id),
            "run_kind": "campaign",
            "run_id": campaign_id,
            "step_id": message.id,
            "workflow_id": path_workflow_id(campaign_id, req.path.id),
            "profile_id": profile_id,
            "channel": message.channel.value,
            "status": status,
            "reason": None if reason is None else str(reason),
            "transactional": False,
            "provider": None,
            "provider_message_id": None,
            "to_address": None,
            "subject": None,
            "created_at": now,
            "sent_at": None,
            "segments": None,
            "test": False,
            "claimed_at": None,
        }

    def _record(
        self,
        session: Session,
        req: PageRequest,
        message: MessageSnapshot,
        provider: AnyProvider,
        deliveries: list[dict[str, Any]],
        outgoing: list[tuple[dict[str, Any], str]],
        page: _Page,
    ) -> list[OutgoingMessage]:
        """Inserts the page's delivery rows; the outbox also gets its messages now, an external
        provider's are returned claimed (`sending`) for the caller to send after commit.

        The page holds its message's row lock (PostgreSQL) or the database's write lock
        (SQLite), so no other attempt inserts these keys meanwhile and the page query saw every
        earlier one: every row here is new. Should a key be taken all the same, the page rolls
        back before anything is sent and Temporal retries it; the retry reports the recorded
        outcome.
        """
        new_rows = [_columns(row) for row in deliveries if not row.get("resend")]
        if new_rows:
            # One multi-row statement; no RETURNING (it costs 2-3x on both backends).
            inserted = session.execute(
                insert_ignoring_conflicts(session, _delivery), new_rows
            ).rowcount
            if inserted is None or inserted < 0:  # PostgreSQL reports no count for executemany
                inserted = session.execute(
                    select(func.count())
                    .select_from(_delivery)
                    .where(_delivery.c.id.in_([row["id"] for row in new_rows]))
                ).scalar_one()
            if inserted != len(new_rows):
                raise ApplicationError(
                    f"{len(new_rows) - inserted} of this page's delivery keys were taken by a"
                    " concurrent attempt; retrying reports their outcome",
                    type="ConcurrentPage",
                )
        resent = [row for row in deliveries if row.get("resend")]
        if resent:  # a dead attempt's claims, taken over by this attempt
            session.execute(
                update(_delivery)
                .where(_delivery.c.id == bindparam("b_id"))
                .values(
                    status=bindparam("b_status"),
                    reason=bindparam("b_reason"),
                    provider=bindparam("b_provider"),
                    sent_at=bindparam("b_sent_at", type_=_delivery.c.sent_at.type),
                    claimed_at=bindparam("b_claimed_at", type_=_delivery.c.claimed_at.type),
                ),
                [
                    {
                        "b_id": row["id"],
                        "b_status": row["status"],
                        "b_reason": row["reason"],
                        "b_provider": row["provider"],
                        "b_sent_at": row["sent_at"],
                        "b_claimed_at": row["claimed_at"],
                    }
                    for row in resent
                ],
            )
        if isinstance(provider, OutboxProvider):
            self._to_outbox(session, req, message, outgoing)
            for row in deliveries:
                page.count(row["status"], row["reason"])
            return []
        for row in deliveries:
            if row["status"] != DeliveryStatus.sending:
                page.count(row["status"], row["reason"])
        return [self._message(req, message, row, body) for row, body in outgoing]

    def _to_outbox(
        self,
        session: Session,
        req: PageRequest,
        message: MessageSnapshot,
        outgoing: list[tuple[dict[str, Any], str]],
    ) -> None:
        if not outgoing:
            return
        session.execute(
            insert(_outbox), [self._outbox_row(req, message, row, body) for row, body in outgoing]
        )
        # The outbox row's id is the provider's message id, as the deliver activity records it:
        # one set-based update over the page's sent rows (a resent claim becomes sent too).
        outbox_id = (
            select(_outbox.c.id).where(_outbox.c.delivery_id == _delivery.c.id).scalar_subquery()
        )
        session.execute(
            update(_delivery)
            .where(_delivery.c.id.in_([row["id"] for row, _ in outgoing]))
            .values(provider_message_id=cast(outbox_id, String), status=DeliveryStatus.sent)
        )

    @staticmethod
    def _outbox_row(
        req: PageRequest, message: MessageSnapshot, row: dict[str, Any], body: str
    ) -> dict[str, Any]:
        return {
            "delivery_id": row["id"],
            "profile_id": row["profile_id"],
            "channel": row["channel"],
            "to_address": row["to_address"],
            "subject": row["subject"],
            "body": body,
            "tracking": _tracking(req, message, row),
            "created_at": row["created_at"],
        }

    @staticmethod
    def _message(
        req: PageRequest, message: MessageSnapshot, row: dict[str, Any], body: str
    ) -> OutgoingMessage:
        return OutgoingMessage(
            delivery_id=row["id"],
            idempotency_key=row["idempotency_key"],
            profile_id=row["profile_id"],
            channel=message.channel,
            to_address=row["to_address"],
            subject=row["subject"],
            body=body,
            text=row["rendered"].text,
            sender=message.content.sender,
            sender_name=message.content.sender_name,
            reply_to=message.content.reply_to,
            template=row["rendered"].template,
            push_tokens=row["push_tokens"],
            tracking=_tracking(req, message, row),
        )

    @staticmethod
    def _mark_sending(
        session: Session, campaign_id: str, message_id: str, now: datetime, sent_now: int
    ) -> None:
        if sent_now:
            # The campaign starts with its first real send (any path): exit criteria count
            # conversions from then on.
            session.execute(
                update(_campaign)
                .where(_campaign.c.id == campaign_id, _campaign.c.started_at.is_(None))
                .values(started_at=now)
            )
        session.execute(
            update(_campaign)
            .where(_campaign.c.id == campaign_id, _campaign.c.status == CampaignStatus.scheduled)
            .values(status=CampaignStatus.sending, updated_at=now)
        )
        session.execute(
            update(_message)
            .where(
                _message.c.id == message_id,
                _message.c.status.in_(MESSAGE_FROM[MessageStatus.sending]),
            )
            .values(status=MessageStatus.sending)
        )


_NOT_COLUMNS = ("push_tokens", "resend", "rendered")


def _allowed_now(facts: Facts) -> Facts:
    """What a resend of a dead attempt's claim re-checks: whether sending is still allowed.
    Smart sending, caps and quiet hours were passed when the message was first claimed."""
    return replace(facts, recently_messaged=False, cap_reached=False, quiet_hours_end=None)


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in _NOT_COLUMNS}


def _tracking(req: PageRequest, message: MessageSnapshot, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "$delivery_id": row["id"],
        "run_kind": "campaign",
        "run_id": req.settings.campaign_id,
        "step_id": message.id,
    }
