"""Campaign sending activities: count the audience, plan a message's waves, send a page of
recipients (activities/campaign_pages.py), close up.

The path workflow (workflows/campaigns.py) carries only counts and a cursor; recipients are
resolved here, page by page, with set-based SQL (herald/campaigns/audience.py). Wave planning is
pure and lives in herald/campaigns/waves.py.
"""

from collections import Counter
from collections.abc import Mapping

from sqlalchemy import (
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.campaign_pages import PageSender
from herald.campaigns.audience import (
    audience_condition,
    campaign_audience,
    count_of,
    segments_named,
)
from herald.campaigns.contract import (
    CampaignActivitiesContract,
    CampaignSettings,
    CampaignSnapshot,
    FinishRequest,
    MessageSnapshot,
    PageRequest,
    PageResult,
    PathSnapshot,
    PlanRequest,
    WavePlan,
)
from herald.campaigns.transitions import MESSAGE_FROM
from herald.campaigns.waves import campaign_zone, effective_zone, plan_waves
from herald.core.clock import activity_now
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.delivery.pace import send_paced
from herald.delivery.provider_hub import AnyProvider, ProviderHub
from herald.delivery.providers.base import Provider
from herald.delivery.send_path import record
from herald.segments.membership import segment_clauses
from models.campaigns import Campaign, CampaignMessage
from models.enums import CampaignStatus, MessageStatus
from models.profile import Profile
from models.types import utcnow

_profile = Profile.__table__
_campaign = Campaign.__table__
_message = CampaignMessage.__table__


def _find_message(path: PathSnapshot, message_id: str) -> MessageSnapshot:
    for message in path.messages:
        if message.id == message_id:
            return message
    raise ApplicationError(
        f"message {message_id!r} is not in path {path.id!r}",
        type="InvalidCampaign",
        non_retryable=True,
    )


def _audience(
    engine: Engine, settings: CampaignSettings, path: PathSnapshot, all_paths: list[PathSnapshot]
):
    """The path's audience now (segments are evaluated at send time, like lists)."""
    try:
        with session_scope(engine) as session:
            named = segments_named([path, *all_paths])
            segments = segment_clauses(session, named, activity_now())
        return audience_condition(settings, path, all_paths, segments)
    except ValueError as exc:  # a deleted segment, or an incomplete snapshot: no retry can help
        raise ApplicationError(str(exc), type="InvalidCampaign", non_retryable=True) from exc


# No chunk of a page starts after this; with herald/delivery/pace.py CHUNK_GRACE, a page's
# provider calls end inside the activity's 30 s start-to-close timeout.
PAGE_SEND_SECONDS = 15.0
# Messages per provider connection in one page: 250 (5 s at 20 ms each, a local relay; a slower
# provider runs into the page's budget and its retry sends the rest).
MESSAGES_PER_CONNECTION = 250


def page_size_for(req: PageRequest, provider: AnyProvider) -> int:
    """How many recipients this page takes: the wave's remainder, and for a provider with a
    published rate no more than it sends in PAGE_SEND_SECONDS (a long-code SMS number sends
    about one message a second, so its pages are small and the workflow simply takes more). A
    page that still runs out of time releases the rest for its retry (herald/delivery/pace.py)."""
    wanted = req.page_size
    if req.wave.limit is not None:
        wanted = min(wanted, req.wave.limit - req.sent_in_wave)
    if isinstance(provider, Provider):
        # An external provider's page is what its connections carry in a few seconds; a paced
        # one's no more than its rate allows. Only the provider's configuration decides: a
        # retried page must take the same rows as its first attempt.
        wanted = min(wanted, provider.limits.concurrency * MESSAGES_PER_CONNECTION)
        if provider.limits.per_second:
            wanted = min(wanted, max(1, int(provider.limits.per_second * PAGE_SEND_SECONDS * 0.8)))
    return wanted


class CampaignActivities(CampaignActivitiesContract):
    """The campaign sending activities; the worker wires the engine, settings and providers."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        providers: Mapping[str, AnyProvider] | None = None,
        hub: ProviderHub | None = None,
    ):
        self.engine = engine
        self.settings = settings
        self.hub = hub or ProviderHub(settings, fixed=providers)

    # ---- audience and plan ----

    @activity.defn(name="count_campaign_audience")
    def count_campaign_audience(self, snapshot: CampaignSnapshot) -> int:
        """Everyone some path would send to (zero cancels the campaign)."""
        with session_scope(self.engine) as session:
            named = segments_named(snapshot.paths)
            segments = segment_clauses(session, named, activity_now())
            try:
                query = count_of(campaign_audience(snapshot.paths, segments))
            except ValueError as exc:
                raise ApplicationError(
                    str(exc), type="InvalidCampaign", non_retryable=True
                ) from exc
            return int(session.execute(query).scalar_one())

    @activity.defn(name="plan_message")
    def plan_message(self, req: PlanRequest) -> WavePlan:
        """Counts the message's audience (stored as its audience_size) and plans its waves."""
        message = _find_message(req.path, req.message_id)
        condition = _audience(self.engine, req.settings, req.path, req.all_paths)
        per_zone: Counter[str] | None = None
        with session_scope(self.engine) as session:
            if req.settings.local_time:
                fallback = campaign_zone(req.settings)
                per_zone = Counter()
                rows = session.execute(
                    select(_profile.c.timezone, func.count())
                    .where(condition)
                    .group_by(_profile.c.timezone)
                )
                for zone, count in rows:
                    per_zone[effective_zone(zone, fallback)] += count
                audience = sum(per_zone.values())
            else:
                audience = session.execute(
                    select(func.count()).select_from(_profile).where(condition)
                ).scalar_one()
            session.execute(
                update(_message).where(_message.c.id == message.id).values(audience_size=audience)
            )
        waves = plan_waves(req.settings, message, req.now, audience, per_zone)
        return WavePlan(audience=audience, waves=waves)

    # ---- sending ----

    @activity.defn(name="send_page")
    def send_page(self, req: PageRequest) -> PageResult:
        """Sends the next page of a wave; see the module docstring for the guarantees."""
        message = _find_message(req.path, req.message_id)
        condition = _audience(self.engine, req.settings, req.path, req.all_paths)
        with session_scope(self.engine) as session:
            provider = self.hub.provider(session, message.channel)
            wanted = page_size_for(req, provider)
            if wanted <= 0:
                return PageResult(recipients=0, sent=0, done=True)
            claimed_at = utcnow()  # real time: how long an attempt lives is real
            result, pending = PageSender().send(
                session, req, message, condition, provider, wanted, claimed_at
            )
        if not pending:
            return result
        # The claims are committed: the provider is called with no transaction open.
        assert isinstance(provider, Provider)
        outcomes = send_paced(
            self.engine, self.hub, provider, message.channel, pending, PAGE_SEND_SECONDS
        )
        with session_scope(self.engine) as session:
            recorded = record(session, message.channel, pending, outcomes, req.now, claimed_at)
        recorded.raise_for_retry()
        return result.model_copy(
            update={"sent": result.sent + recorded.sent, "failed": result.failed + recorded.failed}
        )

    @activity.defn(name="finish_campaign")
    def finish_campaign(self, req: FinishRequest) -> None:
        """Ends a scheduled or sending campaign as `sent` or `cancelled` (with its reason).

        A campaign that is already cancelled, sent, or back in draft (unscheduled) is left as it
        is, so a retry or a late finish never overwrites a cancellation. Its messages still
        scheduled or sending take the campaign's final status.
        """
        if req.status not in (CampaignStatus.sent, CampaignStatus.cancelled):
            raise ApplicationError(
                f"a campaign finishes as sent or cancelled, not {req.status!r}",
                type="InvalidCampaign",
                non_retryable=True,
            )
        now = activity_now()
        with session_scope(self.engine) as session:
            result = session.execute(
                update(_campaign)
                .where(
                    _campaign.c.id == req.campaign_id,
                    _campaign.c.status.in_((CampaignStatus.scheduled, CampaignStatus.sending)),
                )
                .values(
                    status=req.status,
                    finished_at=now,
                    cancel_reason=req.reason if req.status == CampaignStatus.cancelled else None,
                    updated_at=now,
                )
            )
            if result.rowcount:
                session.execute(
                    update(_message)
                    .where(
                        _message.c.campaign_id == req.campaign_id,
                        _message.c.status.in_((MessageStatus.scheduled, MessageStatus.sending)),
                    )
                    .values(status=req.status)
                )

    @activity.defn(name="mark_message")
    def mark_message(self, req: FinishRequest) -> None:
        """Moves one message forward (scheduled, sending, sent, cancelled); never backwards."""
        if req.message_id is None or req.status not in MESSAGE_FROM:
            raise ApplicationError(
                f"mark_message needs a message_id and one of {sorted(map(str, MESSAGE_FROM))}",
                type="InvalidCampaign",
                non_retryable=True,
            )
        with session_scope(self.engine) as session:
            session.execute(
                update(_message)
                .where(
                    _message.c.id == req.message_id,
                    _message.c.campaign_id == req.campaign_id,
                    _message.c.status.in_(MESSAGE_FROM[req.status]),
                )
                .values(status=req.status)
            )
