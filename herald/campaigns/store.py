"""Campaigns in the database: editing drafts, the limits and locks, audiences, snapshot, report.

The API router stays thin: it validates the shape of a request and maps the errors below to
HTTP. Every rule about what may change when lives here:
- paths and messages change only while the campaign is a draft (CampaignConflict otherwise);
- send settings and exit criteria lock while anything is scheduled (CampaignLocked: unschedule
  first) and for good once anything was sent (CampaignConflict);
- at most MAX_PATHS paths and MAX_MESSAGES messages in total (InvalidCampaign naming the limit).
Callers lock the campaign row (`load_campaign(..., for_update=True)`) before any change, so two
concurrent requests cannot both take the 30th message.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlmodel import Session

from herald.campaigns.audience import count_of, path_audience, segments_named
from herald.campaigns.contract import (
    CampaignSettings,
    CampaignSnapshot,
    MessageSnapshot,
    PathSnapshot,
)
from herald.campaigns.review import (
    MessageFacts,
    PathFacts,
    ReviewFacts,
    review_campaign,
    send_time_passed,
)
from herald.core.errors import Conflict, Invalid, Locked, NotFound
from herald.core.ids import new_id
from herald.flows.graph import MessageContent
from herald.segments.membership import segment_clauses
from models.account import Account
from models.campaign_dto import (
    LOCKED_FIELDS,
    MAX_MESSAGES,
    MAX_PATHS,
    NULLABLE_FIELDS,
    CampaignCreate,
    CampaignPublic,
    CampaignReport,
    CampaignReview,
    CampaignUpdate,
    MessageContentPublic,
    MessageCreate,
    MessagePublic,
    MessageReport,
    MessageSchedule,
    MessageUpdate,
    PathCreate,
    PathPublic,
    PathReport,
    PathUpdate,
)
from models.campaigns import Campaign, CampaignExit, CampaignMessage, CampaignPath
from models.delivery import Delivery
from models.lists import ProfileList
from models.segments import Segment
from models.types import utcnow

STAGGER_WITH_LOCAL_TIME = (
    "a staggered send cannot use recipient local time: local time fires each timezone's "
    "recipients at the message's time, staggering releases a share of the path every hour; "
    "use one or the other"
)
ACTIVE_STATUSES = ("scheduled", "sending")
_LIST_FIELDS = ("include_lists", "exclude_lists")
_SEGMENT_FIELDS = ("include_segments", "exclude_segments")


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


def _path(session: Session, campaign: Campaign, path_id: str) -> CampaignPath:
    row = session.get(CampaignPath, path_id)
    if row is None or row.campaign_id != campaign.id:
        raise CampaignNotFound("path", path_id)
    return row


def _message(
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


# ---- campaigns ----------------------------------------------------------------------------------


def create_campaign(session: Session, body: CampaignCreate) -> Campaign:
    """A draft campaign; its timezone defaults to the account's."""
    timezone = body.timezone
    if timezone is None:
        account = session.get(Account, 1)
        timezone = account.timezone if account is not None else "UTC"
    campaign = Campaign(
        id=new_id("cmp"),
        **body.model_dump(exclude={"timezone", "tags"}),
        tags=list(dict.fromkeys(body.tags)),
        timezone=timezone,
    )
    session.add(campaign)
    session.flush()
    return campaign


def update_campaign(session: Session, campaign: Campaign, body: CampaignUpdate) -> None:
    """Applies the fields sent. Name, description, tags and colour change in any status."""
    changes = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None and name not in NULLABLE_FIELDS:
            raise InvalidCampaign(name, "must not be null")
        changes[name] = value
    locked = [n for n in LOCKED_FIELDS if n in changes and changes[n] != getattr(campaign, n)]
    if locked:
        _require_settings_editable(campaign, locked)
    if changes.get("local_time") and _has_staggered(session, campaign.id):
        raise InvalidCampaign("local_time", STAGGER_WITH_LOCAL_TIME)
    if "tags" in changes:
        changes["tags"] = list(dict.fromkeys(changes["tags"]))
    for name, value in changes.items():
        setattr(campaign, name, value)
    campaign.updated_at = utcnow()
    session.add(campaign)


def _require_settings_editable(campaign: Campaign, fields: Sequence[str]) -> None:
    named = ", ".join(fields)
    if campaign.started_at is not None:
        raise CampaignConflict(
            f"{named}: locked permanently: messages were already sent "
            "(send settings and exit criteria cannot change once a campaign has started)"
        )
    if campaign.status in ACTIVE_STATUSES:
        raise CampaignLocked(
            f"{named}: locked while the campaign is {campaign.status}: unschedule it (revert "
            "it to draft) first to change send settings or exit criteria"
        )
    if campaign.status != "draft":
        raise CampaignConflict(
            f"{named}: the campaign is {campaign.status}; its send settings and exit criteria "
            "can no longer change"
        )


def delete_campaign(session: Session, campaign: Campaign) -> None:
    if campaign.status not in ("draft", "cancelled"):
        raise CampaignConflict(
            f"campaign {campaign.id!r} is {campaign.status}: only draft or cancelled campaigns "
            "can be deleted (unschedule or cancel it first)"
        )
    for table in (CampaignExit, CampaignMessage, CampaignPath):
        session.execute(delete(table).where(table.campaign_id == campaign.id))
    session.delete(campaign)


def require_draft(campaign: Campaign) -> None:
    """Paths and messages change only in draft."""
    if campaign.status == "draft":
        return
    if campaign.status in ACTIVE_STATUSES:
        hint = "unschedule it (revert it to draft) to edit paths and messages"
    else:
        hint = "paths and messages can no longer change"
    raise CampaignConflict(f"campaign {campaign.id!r} is {campaign.status}: {hint}")


# ---- paths --------------------------------------------------------------------------------------


def _check_audience(session: Session, values: dict[str, list[str]]) -> dict[str, list[str]]:
    """Deduplicates the id lists; refuses unknown lists and unknown or draft segments."""
    out = {name: list(dict.fromkeys(ids)) for name, ids in values.items()}
    named = {i for name in _SEGMENT_FIELDS for i in out.get(name, [])}
    status = dict(
        session.execute(select(Segment.id, Segment.status).where(Segment.id.in_(named))).all()
        if named
        else []
    )
    for name in _SEGMENT_FIELDS:
        for index, segment_id in enumerate(out.get(name, [])):
            if segment_id not in status:
                raise InvalidCampaign(f"{name}[{index}]", f"no segment has id {segment_id!r}")
            if status[segment_id] != "live":
                reason = f"segment {segment_id!r} is a draft: set it live first"
                raise InvalidCampaign(f"{name}[{index}]", reason)
    wanted = {i for name in _LIST_FIELDS for i in out.get(name, [])}
    known = (
        set(session.scalars(select(ProfileList.id).where(ProfileList.id.in_(wanted))))
        if wanted
        else set()
    )
    for name in _LIST_FIELDS:
        for index, list_id in enumerate(out.get(name, [])):
            if list_id not in known:
                raise InvalidCampaign(f"{name}[{index}]", f"no list has id {list_id!r}")
    return out


def _count_paths(session: Session, campaign_id: str) -> int:
    stmt = select(func.count()).where(CampaignPath.campaign_id == campaign_id)
    return session.scalar(stmt) or 0


def _count_messages(session: Session, campaign_id: str) -> int:
    stmt = select(func.count()).where(CampaignMessage.campaign_id == campaign_id)
    return session.scalar(stmt) or 0


def _require_path_room(session: Session, campaign: Campaign) -> None:
    if _count_paths(session, campaign.id) >= MAX_PATHS:
        raise InvalidCampaign("paths", f"a campaign can have at most {MAX_PATHS} paths")


def _require_message_room(session: Session, campaign: Campaign, adding: int = 1) -> None:
    have = _count_messages(session, campaign.id)
    if have + adding > MAX_MESSAGES:
        raise InvalidCampaign(
            "messages",
            f"a campaign can have at most {MAX_MESSAGES} messages in total across its paths "
            f"(it has {have}, this would add {adding})",
        )


def add_path(session: Session, campaign: Campaign, body: PathCreate) -> CampaignPath:
    require_draft(campaign)
    _require_path_room(session, campaign)
    audience = _check_audience(session, body.model_dump(exclude={"name"}))
    position = _count_paths(session, campaign.id)
    path = CampaignPath(
        id=new_id("cpa"),
        campaign_id=campaign.id,
        position=position,
        name=body.name or f"Path {position + 1}",
        **audience,
    )
    session.add(path)
    _touch(session, campaign)
    return path


def update_path(
    session: Session, campaign: Campaign, path_id: str, body: PathUpdate
) -> CampaignPath:
    require_draft(campaign)
    path = _path(session, campaign, path_id)
    changes = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None:
            raise InvalidCampaign(name, "must not be null")
        changes[name] = value
    changes.update(_check_audience(session, {k: v for k, v in changes.items() if k != "name"}))
    for name, value in changes.items():
        setattr(path, name, value)
    session.add(path)
    _touch(session, campaign)
    return path


def delete_path(session: Session, campaign: Campaign, path_id: str) -> None:
    """Deletes the path and its messages; later paths move up."""
    require_draft(campaign)
    path = _path(session, campaign, path_id)
    session.execute(delete(CampaignMessage).where(CampaignMessage.path_id == path.id))
    session.delete(path)
    session.flush()
    for position, row in enumerate(paths_of(session, campaign.id)):
        row.position = position
        session.add(row)
    _touch(session, campaign)


def clone_path(session: Session, campaign: Campaign, path_id: str) -> CampaignPath:
    """A copy of the path and its messages (as drafts), placed right after it."""
    require_draft(campaign)
    source = _path(session, campaign, path_id)
    _require_path_room(session, campaign)
    messages = list(
        session.scalars(
            select(CampaignMessage)
            .where(CampaignMessage.path_id == source.id)
            .order_by(CampaignMessage.position, CampaignMessage.id)
        )
    )
    _require_message_room(session, campaign, adding=len(messages))
    session.execute(
        update(CampaignPath)
        .where(CampaignPath.campaign_id == campaign.id, CampaignPath.position > source.position)
        .values(position=CampaignPath.position + 1)
    )
    copy = CampaignPath(
        id=new_id("cpa"),
        campaign_id=campaign.id,
        position=source.position + 1,
        name=f"{source.name} (copy)"[:200],
        include_lists=list(source.include_lists),
        exclude_lists=list(source.exclude_lists),
        include_segments=list(source.include_segments),
        exclude_segments=list(source.exclude_segments),
    )
    session.add(copy)
    session.flush()  # the path before its messages (foreign key)
    for message in messages:
        session.add(_copy_message(message, copy.id, message.position))
    _touch(session, campaign)
    return copy


def reorder_paths(session: Session, campaign: Campaign, path_ids: Sequence[str]) -> None:
    require_draft(campaign)
    paths = {p.id: p for p in paths_of(session, campaign.id)}
    if len(set(path_ids)) != len(path_ids) or set(path_ids) != set(paths):
        unknown = [p for p in path_ids if p not in paths]
        missing = [p for p in paths if p not in path_ids]
        detail = []
        if unknown:
            detail.append(f"not paths of this campaign: {', '.join(unknown)}")
        if missing:
            detail.append(f"missing: {', '.join(missing)}")
        if len(set(path_ids)) != len(path_ids):
            detail.append("an id appears twice")
        raise InvalidCampaign(
            "path_ids",
            "must list every path of the campaign exactly once (" + "; ".join(detail) + ")",
        )
    for position, path_id in enumerate(path_ids):
        paths[path_id].position = position
        session.add(paths[path_id])
    _touch(session, campaign)


# ---- messages -----------------------------------------------------------------------------------


def _require_future(campaign: Campaign, send_at: str, now: datetime) -> None:
    if send_time_passed(send_at, campaign.timezone, now):
        local_now = now.astimezone(ZoneInfo(campaign.timezone)).strftime("%Y-%m-%dT%H:%M")
        raise InvalidCampaign(
            "send_at",
            f"{send_at} is in the past in the campaign timezone {campaign.timezone} "
            f"(it is now {local_now} there)",
        )


def _next_message_position(session: Session, path_id: str) -> int:
    stmt = select(func.max(CampaignMessage.position)).where(CampaignMessage.path_id == path_id)
    last = session.scalar(stmt)
    return 0 if last is None else last + 1


def add_message(
    session: Session, campaign: Campaign, path_id: str, body: MessageCreate, now: datetime
) -> CampaignMessage:
    require_draft(campaign)
    path = _path(session, campaign, path_id)
    _require_message_room(session, campaign)
    _require_future(campaign, body.send_at, now)
    if body.schedule.mode == "staggered" and campaign.local_time:
        raise InvalidCampaign("schedule", STAGGER_WITH_LOCAL_TIME)
    message = CampaignMessage(
        id=new_id("cms"),
        campaign_id=campaign.id,
        path_id=path.id,
        position=_next_message_position(session, path.id),
        channel=body.channel.value,
        content=body.content.model_dump(),
        send_at_local=body.send_at,
        stagger_percent=body.schedule.percent_per_hour,
        smart_sending=body.smart_sending,
        utm=body.utm,
    )
    session.add(message)
    _touch(session, campaign)
    return message


def update_message(
    session: Session,
    campaign: Campaign,
    path_id: str,
    message_id: str,
    body: MessageUpdate,
    now: datetime,
) -> CampaignMessage:
    require_draft(campaign)
    message = _message(session, campaign, message_id, path_id)
    for name in body.model_fields_set:
        if getattr(body, name) is None:
            raise InvalidCampaign(name, "must not be null")
    if body.send_at is not None and body.send_at != message.send_at_local:
        _require_future(campaign, body.send_at, now)
        message.send_at_local = body.send_at
    if body.schedule is not None:
        if body.schedule.mode == "staggered" and campaign.local_time:
            raise InvalidCampaign("schedule", STAGGER_WITH_LOCAL_TIME)
        message.stagger_percent = body.schedule.percent_per_hour
    if body.content is not None:
        content = {**(message.content or {}), **body.content.model_dump(exclude_unset=True)}
        message.content = content
    if body.channel is not None:
        message.channel = body.channel.value
    for name in ("smart_sending", "utm"):
        if name in body.model_fields_set:
            setattr(message, name, getattr(body, name))
    session.add(message)
    _touch(session, campaign)
    return message


def delete_message(session: Session, campaign: Campaign, path_id: str, message_id: str) -> None:
    require_draft(campaign)
    session.delete(_message(session, campaign, message_id, path_id))
    _touch(session, campaign)


def clone_message(
    session: Session,
    campaign: Campaign,
    path_id: str,
    message_id: str,
    to_path_id: str | None,
) -> CampaignMessage:
    """A draft copy of the message in `to_path_id` (default: its own path), same send time."""
    require_draft(campaign)
    source = _message(session, campaign, message_id, path_id)
    target = _path(session, campaign, to_path_id or source.path_id)
    _require_message_room(session, campaign)
    copy = _copy_message(source, target.id, _next_message_position(session, target.id))
    session.add(copy)
    _touch(session, campaign)
    return copy


def _copy_message(source: CampaignMessage, path_id: str, position: int) -> CampaignMessage:
    return CampaignMessage(
        id=new_id("cms"),
        campaign_id=source.campaign_id,
        path_id=path_id,
        position=position,
        channel=source.channel,
        content=dict(source.content or {}),
        send_at_local=source.send_at_local,
        stagger_percent=source.stagger_percent,
        smart_sending=source.smart_sending,
        utm=source.utm,
    )


def _has_staggered(session: Session, campaign_id: str) -> bool:
    stmt = select(
        exists().where(
            CampaignMessage.campaign_id == campaign_id,
            CampaignMessage.stagger_percent.is_not(None),
        )
    )
    return bool(session.scalar(stmt))


def _touch(session: Session, campaign: Campaign) -> None:
    campaign.updated_at = utcnow()
    session.add(campaign)


# ---- audiences ----------------------------------------------------------------------------------


def audience_counts(
    session: Session, campaign: Campaign, paths: Sequence[CampaignPath]
) -> dict[str, tuple[int, int]]:
    """Per path id: (audience size, how many of those an earlier path also reaches).

    The same set-based SQL the campaign sends with (herald/campaigns/audience.py): two COUNTs
    per path, whatever the audience size.
    """
    snaps = [_path_snapshot(p, []) for p in sorted(paths, key=lambda p: p.position)]
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


# ---- review -------------------------------------------------------------------------------------


def review(
    session: Session, campaign: Campaign, *, default_email_sender: str | None, now: datetime
) -> CampaignReview:
    """Gathers what the review rules need from the database and applies them."""
    paths = paths_of(session, campaign.id)
    messages = messages_by_path(session, campaign.id)
    account = session.get(Account, 1)
    referenced = {i for p in paths for name in _LIST_FIELDS for i in getattr(p, name)}
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
                    i for name in _LIST_FIELDS for i in getattr(p, name) if i not in known
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
    )


# ---- lifecycle ----------------------------------------------------------------------------------


def mark_scheduled(session: Session, campaign: Campaign, now: datetime) -> None:
    campaign.status = "scheduled"
    campaign.scheduled_at = now
    campaign.cancel_reason = None
    _set_message_status(session, campaign.id, "scheduled", only=("draft",))
    _touch(session, campaign)


def revert_to_draft(session: Session, campaign: Campaign) -> None:
    campaign.status = "draft"
    campaign.scheduled_at = None
    _set_message_status(session, campaign.id, "draft", only=("scheduled",))
    _touch(session, campaign)


def cancel(session: Session, campaign: Campaign, reason: str, now: datetime) -> None:
    """Ends the campaign; every message not yet sent is cancelled."""
    campaign.status = "cancelled"
    campaign.cancel_reason = reason
    campaign.finished_at = now
    _set_message_status(session, campaign.id, "cancelled", only=("draft", "scheduled", "sending"))
    _touch(session, campaign)


def anything_sent(session: Session, campaign: Campaign) -> bool:
    """Has any message gone out, or been processed for anyone (a delivery row of any status)?

    A processed message cannot be reverted: its delivery rows' idempotency keys would keep it
    from ever being sent to those profiles again.
    """
    if campaign.started_at is not None:
        return True
    processed = select(
        or_(
            exists().where(Delivery.run_kind == "campaign", Delivery.run_id == campaign.id),
            exists().where(
                CampaignMessage.campaign_id == campaign.id,
                CampaignMessage.status.in_(("sending", "sent")),
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
        paths=[_path_snapshot(p, messages.get(p.id, [])) for p in paths],
        search_attributes=search_attributes,
    )


def _path_snapshot(path: CampaignPath, messages: Sequence[CampaignMessage]) -> PathSnapshot:
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


# ---- report -------------------------------------------------------------------------------------


@dataclass
class _Counts:
    sent: int = 0
    failed: int = 0
    skipped: dict[str, int] | None = None

    def add(self, status: str, reason: str | None, count: int) -> None:
        if status == "sent":
            self.sent += count
        elif status == "failed":
            self.failed += count
        elif status == "skipped":
            self.skipped = self.skipped or {}
            key = reason or "unspecified"
            self.skipped[key] = self.skipped.get(key, 0) + count

    def fields(self) -> dict:
        return {"sent": self.sent, "failed": self.failed, "skipped": dict(self.skipped or {})}


def report(session: Session, campaign: Campaign) -> CampaignReport:
    """Per message and per path: audience size, sent, skipped by reason, failed."""
    d = Delivery.__table__.c
    rows = session.execute(
        select(d.step_id, d.status, d.reason, func.count())
        .where(d.run_kind == "campaign", d.run_id == campaign.id)
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
                for reason, n in (counts.skipped or {}).items():
                    c.add("skipped", reason, n)
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
