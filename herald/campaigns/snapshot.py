"""The campaign as its workflow runs it, frozen when it is scheduled."""

from collections.abc import Sequence

from sqlmodel import Session

from herald.campaigns.contract import (
    CampaignSettings,
    CampaignSnapshot,
    MessageSnapshot,
    PathSnapshot,
)
from herald.campaigns.store import load_campaign, messages_by_path, paths_of
from herald.flows.graph import MessageContent
from models.campaigns import CampaignMessage, CampaignPath


def snapshot(session: Session, campaign_id: str, search_attributes: bool) -> CampaignSnapshot:
    """The campaign as its workflow runs it: paths in order, messages in send time order."""
    campaign = load_campaign(session, campaign_id)
    paths = paths_of(session, campaign_id)
    messages = messages_by_path(session, campaign_id)
    return CampaignSnapshot(
        settings=CampaignSettings(
            campaign_id=campaign.id,
            name=campaign.name,
            timezone=campaign.timezone,
            local_time=campaign.local_time,
            past_time_policy=campaign.past_time_policy,
            exit_metric=campaign.exit_metric,
            path_order=[p.id for p in paths],
        ),
        paths=[path_snapshot(p, messages.get(p.id, [])) for p in paths],
        search_attributes=search_attributes,
    )


def path_snapshot(path: CampaignPath, messages: Sequence[CampaignMessage]) -> PathSnapshot:
    return PathSnapshot(
        id=path.id,
        position=path.position,
        name=path.name,
        include_lists=list(path.include_lists),
        exclude_lists=list(path.exclude_lists),
        include_segments=list(path.include_segments),
        exclude_segments=list(path.exclude_segments),
        messages=[
            MessageSnapshot(
                id=m.id,
                channel=m.channel,
                content=MessageContent.model_validate(
                    {k: v for k, v in (m.content or {}).items() if v is not None}
                ),
                send_at_local=m.send_at_local,
                stagger_percent=m.stagger_percent,
                smart_sending=m.smart_sending,
                utm=m.utm,
            )
            for m in messages
        ],
    )
