"""Campaigns in the database: loading rows, their public shape, and the domain errors.

Every rule about what may change when lives in the modules beside this one:
- editing.py: drafts' paths and messages, the limits and the locks;
- transitions.py: status changes (scheduled, draft, cancelled) and whether anything was sent;
- lifecycle.py: schedule, unschedule and cancel across the database and Temporal;
- snapshot.py, review_facts.py, report.py: what the workflow runs, what review checks, what it sent.
Callers lock the campaign row (`load_campaign(..., for_update=True)`) before any change, so two
concurrent requests cannot both take the 30th message.
"""

from collections import defaultdict

from sqlalchemy import select
from sqlmodel import Session

from herald.core.errors import Conflict, Invalid, Locked, NotFound
from models.campaign_dto import (
    CampaignPublic,
    MessageContentPublic,
    MessagePublic,
    MessageSchedule,
    PathPublic,
)
from models.campaigns import Campaign, CampaignMessage, CampaignPath
from models.enums import CampaignStatus
from models.types import utcnow

ACTIVE_STATUSES = (CampaignStatus.scheduled, CampaignStatus.sending)
LIST_FIELDS = ("include_lists", "exclude_lists")


class CampaignNotFound(NotFound):
    """A campaign, path or message that does not exist."""


class InvalidCampaign(Invalid):
    """Bad input that only the database can tell (a limit, an unknown list)."""


class CampaignConflict(Conflict):
    """Not possible in the campaign's state, now or ever."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class CampaignLocked(Locked):
    """Not possible while the campaign is scheduled; unscheduling unlocks it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


# ---- loading ------------------------------------------------------------------------------------


def load_campaign(session: Session, campaign_id: str, *, for_update: bool = False) -> Campaign:
    row = session.get(Campaign, campaign_id, with_for_update=for_update)
    if row is None:
        raise CampaignNotFound("campaign", campaign_id)
    return row


def paths_of(session: Session, campaign_id: str) -> list[CampaignPath]:
    stmt = (
        select(CampaignPath)
        .where(CampaignPath.campaign_id == campaign_id)
        .order_by(CampaignPath.position, CampaignPath.id)
    )
    return list(session.scalars(stmt))


def messages_by_path(session: Session, campaign_id: str) -> dict[str, list[CampaignMessage]]:
    """Each path's messages in send time order (then creation order)."""
    stmt = (
        select(CampaignMessage)
        .where(CampaignMessage.campaign_id == campaign_id)
        .order_by(CampaignMessage.send_at_local, CampaignMessage.position, CampaignMessage.id)
    )
    out: dict[str, list[CampaignMessage]] = defaultdict(list)
    for message in session.scalars(stmt):
        out[message.path_id].append(message)
    return out


def path_of(session: Session, campaign: Campaign, path_id: str) -> CampaignPath:
    row = session.get(CampaignPath, path_id)
    if row is None or row.campaign_id != campaign.id:
        raise CampaignNotFound("path", path_id)
    return row


def message_of(
    session: Session, campaign: Campaign, message_id: str, path_id: str | None = None
) -> CampaignMessage:
    row = session.get(CampaignMessage, message_id)
    if row is None or row.campaign_id != campaign.id or path_id not in (None, row.path_id):
        raise CampaignNotFound("message", message_id)
    return row


def public(session: Session, campaign: Campaign) -> CampaignPublic:
    """The campaign with its paths (in order) and their messages (in send time order)."""
    messages = messages_by_path(session, campaign.id)
    paths = [
        PathPublic.model_validate(
            {**p.model_dump(), "messages": [message_public(m) for m in messages.get(p.id, [])]}
        )
        for p in paths_of(session, campaign.id)
    ]
    return CampaignPublic.model_validate({**campaign.model_dump(), "paths": paths})


def path_public(session: Session, path: CampaignPath) -> PathPublic:
    stmt = (
        select(CampaignMessage)
        .where(CampaignMessage.path_id == path.id)
        .order_by(CampaignMessage.send_at_local, CampaignMessage.position, CampaignMessage.id)
    )
    messages = [message_public(m) for m in session.scalars(stmt)]
    return PathPublic.model_validate({**path.model_dump(), "messages": messages})


def message_public(row: CampaignMessage) -> MessagePublic:
    return MessagePublic.model_validate(
        {
            **row.model_dump(),
            "content": MessageContentPublic.model_validate(row.content or {}),
            "send_at": row.send_at_local,
            "schedule": MessageSchedule.of(row.stagger_percent),
        }
    )


def touch(session: Session, campaign: Campaign) -> None:
    campaign.updated_at = utcnow()
    session.add(campaign)
