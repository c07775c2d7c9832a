"""Editing campaigns: drafts, their paths and messages, the limits and the locks.

- paths and messages change only while the campaign is a draft (CampaignConflict otherwise);
- send settings and exit criteria lock while anything is scheduled (CampaignLocked: unschedule
  first) and for good once anything was sent (CampaignConflict);
- at most MAX_PATHS paths and MAX_MESSAGES messages in total (InvalidCampaign naming the limit).
Callers hold the campaign row locked (store.load_campaign(..., for_update=True)).
"""

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import delete, exists, func, select, update
from sqlmodel import Session

from herald.campaigns.review import (
    send_time_passed,
)
from herald.campaigns.store import (
    ACTIVE_STATUSES,
    LIST_FIELDS,
    CampaignConflict,
    CampaignLocked,
    InvalidCampaign,
    message_of,
    path_of,
    paths_of,
    touch,
)
from herald.core.ids import new_id
from models.account import Account
from models.campaign_dto import (
    LOCKED_FIELDS,
    MAX_MESSAGES,
    MAX_PATHS,
    NULLABLE_FIELDS,
    CampaignCreate,
    CampaignUpdate,
    MessageCreate,
    MessageUpdate,
    PathCreate,
    PathUpdate,
)
from models.campaigns import Campaign, CampaignExit, CampaignMessage, CampaignPath
from models.enums import CampaignStatus, SegmentStatus
from models.lists import ProfileList
from models.segments import Segment
from models.types import utcnow

STAGGER_WITH_LOCAL_TIME = (
    "a staggered send cannot use recipient local time: local time fires each timezone's "
    "recipients at the message's time, staggering releases a share of the path every hour; "
    "use one or the other"
)
_SEGMENT_FIELDS = ("include_segments", "exclude_segments")


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
    if campaign.status != CampaignStatus.draft:
        raise CampaignConflict(
            f"{named}: the campaign is {campaign.status}; its send settings and exit criteria "
            "can no longer change"
        )


def delete_campaign(session: Session, campaign: Campaign) -> None:
    if campaign.status not in (CampaignStatus.draft, CampaignStatus.cancelled):
        raise CampaignConflict(
            f"campaign {campaign.id!r} is {campaign.status}: only draft or cancelled campaigns "
            "can be deleted (unschedule or cancel it first)"
        )
    for table in (CampaignExit, CampaignMessage, CampaignPath):
        session.execute(delete(table).where(table.campaign_id == campaign.id))
    session.delete(campaign)


def require_draft(campaign: Campaign) -> None:
    """Paths and messages change only in draft."""
    if campaign.status == CampaignStatus.draft:
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
            if status[segment_id] != SegmentStatus.live:
                reason = f"segment {segment_id!r} is a draft: set it live first"
                raise InvalidCampaign(f"{name}[{index}]", reason)
    wanted = {i for name in LIST_FIELDS for i in out.get(name, [])}
    known = (
        set(session.scalars(select(ProfileList.id).where(ProfileList.id.in_(wanted))))
        if wanted
        else set()
    )
    for name in LIST_FIELDS:
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
    touch(session, campaign)
    return path


def update_path(
    session: Session, campaign: Campaign, path_id: str, body: PathUpdate
) -> CampaignPath:
    require_draft(campaign)
    path = path_of(session, campaign, path_id)
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
    touch(session, campaign)
    return path


def delete_path(session: Session, campaign: Campaign, path_id: str) -> None:
    """Deletes the path and its messages; later paths move up."""
    require_draft(campaign)
    path = path_of(session, campaign, path_id)
    session.execute(delete(CampaignMessage).where(CampaignMessage.path_id == path.id))
    session.delete(path)
    session.flush()
    for position, row in enumerate(paths_of(session, campaign.id)):
        row.position = position
        session.add(row)
    touch(session, campaign)


def clone_path(session: Session, campaign: Campaign, path_id: str) -> CampaignPath:
    """A copy of the path and its messages (as drafts), placed right after it."""
    require_draft(campaign)
    source = path_of(session, campaign, path_id)
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
    touch(session, campaign)
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
    touch(session, campaign)


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
    path = path_of(session, campaign, path_id)
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
    touch(session, campaign)
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
    message = message_of(session, campaign, message_id, path_id)
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
    touch(session, campaign)
    return message


def delete_message(session: Session, campaign: Campaign, path_id: str, message_id: str) -> None:
    require_draft(campaign)
    session.delete(message_of(session, campaign, message_id, path_id))
    touch(session, campaign)


def clone_message(
    session: Session,
    campaign: Campaign,
    path_id: str,
    message_id: str,
    to_path_id: str | None,
) -> CampaignMessage:
    """A draft copy of the message in `to_path_id` (default: its own path), same send time."""
    require_draft(campaign)
    source = message_of(session, campaign, message_id, path_id)
    target = path_of(session, campaign, to_path_id or source.path_id)
    _require_message_room(session, campaign)
    copy = _copy_message(source, target.id, _next_message_position(session, target.id))
    session.add(copy)
    touch(session, campaign)
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
