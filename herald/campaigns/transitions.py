"""Campaign status changes in the database: one function per transition, messages follow."""

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import exists, or_, select, update
from sqlmodel import Session

from herald.campaigns.store import touch
from models.campaigns import Campaign, CampaignMessage
from models.delivery import Delivery
from models.enums import CampaignStatus, MessageStatus

# A message's status only moves forward: draft → scheduled → sending → sent, or → cancelled.
MESSAGE_FROM = {
    MessageStatus.scheduled: (MessageStatus.draft,),
    MessageStatus.sending: (MessageStatus.draft, MessageStatus.scheduled),
    MessageStatus.sent: (MessageStatus.draft, MessageStatus.scheduled, MessageStatus.sending),
    MessageStatus.cancelled: (MessageStatus.draft, MessageStatus.scheduled, MessageStatus.sending),
}


def mark_scheduled(session: Session, campaign: Campaign, now: datetime) -> None:
    campaign.status = CampaignStatus.scheduled
    campaign.scheduled_at = now
    campaign.cancel_reason = None
    _set_message_status(session, campaign.id, MessageStatus.scheduled, only=(MessageStatus.draft,))
    touch(session, campaign)


def revert_to_draft(session: Session, campaign: Campaign) -> None:
    campaign.status = CampaignStatus.draft
    campaign.scheduled_at = None
    _set_message_status(session, campaign.id, MessageStatus.draft, only=(MessageStatus.scheduled,))
    touch(session, campaign)


def cancel(session: Session, campaign: Campaign, reason: str, now: datetime) -> None:
    """Ends the campaign; every message not yet sent is cancelled."""
    campaign.status = CampaignStatus.cancelled
    campaign.cancel_reason = reason
    campaign.finished_at = now
    _set_message_status(
        session,
        campaign.id,
        MessageStatus.cancelled,
        only=(MessageStatus.draft, MessageStatus.scheduled, MessageStatus.sending),
    )
    touch(session, campaign)


def anything_sent(session: Session, campaign: Campaign) -> bool:
    """Has any message gone out, or been processed for anyone (a delivery row of any status)?

    A processed message cannot be reverted: its delivery rows' idempotency keys would keep it
    from ever being sent to those profiles again.
    """
    if campaign.started_at is not None:
        return True
    processed = select(
        or_(
            # Test sends leave a draft a draft.
            exists().where(
                Delivery.run_kind == "campaign",
                Delivery.run_id == campaign.id,
                Delivery.test.is_(False),
            ),
            exists().where(
                CampaignMessage.campaign_id == campaign.id,
                CampaignMessage.status.in_((MessageStatus.sending, MessageStatus.sent)),
            ),
        )
    )
    return bool(session.scalar(processed))


def _set_message_status(
    session: Session, campaign_id: str, status: str, only: Iterable[str]
) -> None:
    session.execute(
        update(CampaignMessage)
        .where(CampaignMessage.campaign_id == campaign_id, CampaignMessage.status.in_(only))
        .values(status=status)
    )
