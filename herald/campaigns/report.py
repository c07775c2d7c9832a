"""What a campaign sent: per message and per path counts, and its exits."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlmodel import Session

from herald.campaigns.store import messages_by_path, paths_of
from models.campaign_dto import (
    CampaignReport,
    MessageReport,
    PathReport,
)
from models.campaigns import Campaign, CampaignExit
from models.delivery import Delivery
from models.enums import DeliveryStatus


@dataclass
class _Counts:
    sent: int = 0
    failed: int = 0
    sending: int = 0
    unknown: int = 0
    skipped: dict[str, int] | None = None

    def add(self, status: str, reason: str | None, count: int) -> None:
        if status == DeliveryStatus.sent:
            self.sent += count
        elif status == DeliveryStatus.failed:
            self.failed += count
        elif status == DeliveryStatus.sending:
            self.sending += count
        elif status == DeliveryStatus.unknown:
            self.unknown += count
        elif status == DeliveryStatus.skipped:
            self.skipped = self.skipped or {}
            key = reason or "unspecified"
            self.skipped[key] = self.skipped.get(key, 0) + count

    def fields(self) -> dict:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "sending": self.sending,
            "unknown": self.unknown,
            "skipped": dict(self.skipped or {}),
        }


def report(session: Session, campaign: Campaign) -> CampaignReport:
    """Per message and per path: audience size, sent, skipped by reason, failed."""
    d = Delivery.__table__.c
    rows = session.execute(
        select(d.step_id, d.status, d.reason, func.count())
        .where(d.run_kind == "campaign", d.run_id == campaign.id, d.test.is_(False))
        .group_by(d.step_id, d.status, d.reason)
    ).all()
    by_message: dict[str, _Counts] = defaultdict(_Counts)
    for step_id, status, reason, count in rows:
        by_message[step_id].add(status, reason, count)
    exits = session.scalar(select(func.count()).where(CampaignExit.campaign_id == campaign.id))
    messages = messages_by_path(session, campaign.id)
    total = _Counts()
    paths = []
    for path in paths_of(session, campaign.id):
        path_counts = _Counts()
        lines = []
        for m in messages.get(path.id, []):
            counts = by_message.get(m.id, _Counts())
            for c in (path_counts, total):
                c.sent += counts.sent
                c.failed += counts.failed
                c.sending += counts.sending
                c.unknown += counts.unknown
                for reason, n in (counts.skipped or {}).items():
                    c.add(DeliveryStatus.skipped, reason, n)
            lines.append(
                MessageReport(
                    message_id=m.id,
                    path_id=path.id,
                    channel=m.channel,
                    send_at=m.send_at_local,
                    status=m.status,
                    audience_size=m.audience_size,
                    **counts.fields(),
                )
            )
        sizes = [m.audience_size for m in messages.get(path.id, []) if m.audience_size is not None]
        paths.append(
            PathReport(
                path_id=path.id,
                name=path.name,
                position=path.position,
                audience_size=max(sizes) if sizes else None,
                messages=lines,
                **path_counts.fields(),
            )
        )
    return CampaignReport(
        campaign_id=campaign.id,
        status=campaign.status,
        cancel_reason=campaign.cancel_reason,
        started_at=campaign.started_at,
        exits=exits or 0,
        paths=paths,
        **total.fields(),
    )


def exits_page(
    session: Session, campaign_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[CampaignExit]:
    """Exit records in conversion order (then profile id), after the cursor position."""
    stmt = (
        select(CampaignExit)
        .where(CampaignExit.campaign_id == campaign_id)
        .order_by(CampaignExit.converted_at, CampaignExit.profile_id)
        .limit(limit)
    )
    if after is not None:
        at, profile_id = after
        stmt = stmt.where(
            or_(
                CampaignExit.converted_at > at,
                and_(CampaignExit.converted_at == at, CampaignExit.profile_id > profile_id),
            )
        )
    return list(session.scalars(stmt))
