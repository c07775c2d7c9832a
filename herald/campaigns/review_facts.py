"""Gathers from the database what the pure review rules (review.py) need, and applies them.

`audience_counts` counts each path's audience as the page sender will walk it."""

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlmodel import Session

from herald.campaigns.audience import count_of, path_audience, segments_named
from herald.campaigns.contract import (
    CampaignSettings,
)
from herald.campaigns.review import (
    MessageFacts,
    PathFacts,
    ReviewFacts,
    review_campaign,
)
from herald.campaigns.snapshot import path_snapshot
from herald.campaigns.store import LIST_FIELDS, messages_by_path, paths_of
from herald.segments.membership import segment_clauses
from models.account import Account
from models.campaign_dto import CampaignReview, MessageReview
from models.campaigns import Campaign, CampaignMessage, CampaignPath
from models.lists import ProfileList
from models.types import utcnow


def review(
    session: Session, campaign: Campaign, *, default_email_sender: str | None, now: datetime
) -> CampaignReview:
    """Gathers what the review rules need from the database and applies them."""
    paths = paths_of(session, campaign.id)
    messages = messages_by_path(session, campaign.id)
    account = session.get(Account, 1)
    referenced = {i for p in paths for name in LIST_FIELDS for i in getattr(p, name)}
    known = (
        set(session.scalars(select(ProfileList.id).where(ProfileList.id.in_(referenced))))
        if referenced
        else set()
    )
    counts = audience_counts(session, campaign, paths)
    facts = ReviewFacts(
        timezone=campaign.timezone,
        now=now,
        enabled_channels=frozenset(account.enabled_channels if account else ()),
        default_email_sender=default_email_sender,
        paths=[
            PathFacts(
                id=p.id,
                name=p.name,
                audience=counts[p.id][0],
                in_earlier_paths=counts[p.id][1],
                missing_lists=[
                    i for name in LIST_FIELDS for i in getattr(p, name) if i not in known
                ],
                messages=[_message_facts(m) for m in messages.get(p.id, [])],
            )
            for p in paths
        ],
    )
    return review_campaign(facts)


def _message_facts(row: CampaignMessage) -> MessageFacts:
    content = row.content or {}
    return MessageFacts(
        id=row.id,
        channel=row.channel,
        body=content.get("body") or "",
        subject=content.get("subject"),
        sender=content.get("sender"),
        send_at_local=row.send_at_local,
        utm=row.utm,
        whatsapp_template=bool(content.get("whatsapp_template")),
    )


def audience_counts(
    session: Session, campaign: Campaign, paths: Sequence[CampaignPath]
) -> dict[str, tuple[int, int]]:
    """Per path id: (audience size, how many of those an earlier path also reaches).

    The same set-based SQL the campaign sends with (herald/campaigns/audience.py): two COUNTs
    per path, whatever the audience size.
    """
    snaps = [path_snapshot(p, []) for p in sorted(paths, key=lambda p: p.position)]
    alone = CampaignSettings(campaign_id=campaign.id, name=campaign.name)
    ordered = alone.model_copy(update={"path_order": [p.id for p in snaps]})
    segments = segment_clauses(session, segments_named(snaps), utcnow())
    out: dict[str, tuple[int, int]] = {}
    for snap in snaps:
        own = session.scalar(count_of(path_audience(alone, snap, (), segments))) or 0
        ordered_query = path_audience(ordered, snap, snaps, segments)
        first_path_wins = session.scalar(count_of(ordered_query)) or 0
        out[snap.id] = (own, own - first_path_wins)
    return out


def message_review(
    session: Session,
    campaign: Campaign,
    message_id: str,
    *,
    default_email_sender: str | None,
    now: datetime,
) -> MessageReview | None:
    """The review of one message, as the campaign's review gives it (its path's audience
    counts and all), or None when the campaign has no such message."""
    found = review(session, campaign, default_email_sender=default_email_sender, now=now)
    return next((m for m in found.messages if m.message_id == message_id), None)
