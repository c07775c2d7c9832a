"""Routing handler for campaign exit criteria: a conversion after the start excludes the profile.

Inside the router's transaction: for each routed event whose metric is the exit metric of a
campaign that has started (its first message was sent at or before the event's time), record a
campaign_exit row. The send activity checks those rows (and the events themselves) at send time,
so the exclusion holds whatever the signal does; the one `exits` signal per campaign and batch
only keeps the path workflows' progress query current, and is bounded by batches, not profiles.
It is sent after the routing transaction commits.
"""

from collections import Counter

from sqlalchemy import select
from sqlmodel import Session

from activities.flow_routing import Effects, TemporalBridge
from herald.campaigns.contract import SIGNAL_EXITS, path_workflow_id
from herald.core.sql import insert_ignoring_conflicts
from herald.routing.contract import RoutedItem
from models.campaigns import Campaign, CampaignExit, CampaignPath
from models.enums import CampaignStatus, OutboxKind


class CampaignRoutingHandler:
    name = "campaigns"

    def __init__(self, bridge: TemporalBridge) -> None:
        self.bridge = bridge
        self._pending = Effects()

    def after_commit(self, _engine) -> None:
        effects, self._pending = self._pending, Effects()
        self.bridge.apply(effects)

    def handle(self, session: Session, items: list[RoutedItem]) -> None:
        self._pending = Effects()  # what a rolled-back batch decided is not sent
        events = [i for i in items if i.kind is OutboxKind.event and not i.backfill and i.metric]
        if not events:
            return
        metrics = {i.metric for i in events}
        campaigns = session.execute(
            select(Campaign.id, Campaign.exit_metric, Campaign.started_at).where(
                Campaign.status == CampaignStatus.sending,
                Campaign.started_at.is_not(None),
                Campaign.exit_metric.in_(metrics),
            )
        ).all()
        if not campaigns:
            return
        rows = [
            {
                "campaign_id": campaign_id,
                "profile_id": item.profile_id,
                "event_id": item.event_id,
                "converted_at": item.time,
            }
            for campaign_id, metric, started_at in campaigns
            for item in events
            # Conversions before the start do not exclude ("don't send to" is for those).
            if item.metric == metric and item.time is not None and item.time >= started_at
        ]
        if not rows:
            return
        inserted = session.execute(
            insert_ignoring_conflicts(session, CampaignExit.__table__).returning(
                CampaignExit.__table__.c.campaign_id
            ),
            rows,
        ).scalars()
        per_campaign = Counter(inserted)
        if not per_campaign:
            return
        paths = session.execute(
            select(CampaignPath.campaign_id, CampaignPath.id).where(
                CampaignPath.campaign_id.in_(per_campaign)
            )
        ).all()
        self._pending = Effects(
            signals=[
                (path_workflow_id(campaign_id, path_id), SIGNAL_EXITS, per_campaign[campaign_id])
                for campaign_id, path_id in paths
            ]
        )
