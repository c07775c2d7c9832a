"""Segments as the API sees them: validated definitions, draft/live status, previews.

Every change that can alter who is in a segment recomputes its membership in the same
transaction, without announcing it (organic=False): saving a definition must not start
"added to segment" flows for everyone it happens to match. Going live is such a change: routing
does not re-check drafts, so their members are as of their last full compute until then.
Definitions are bounded by a cost budget (`segment_cost_budget`), since routing re-checks live
segments inside its batches.
"""

import json
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlmodel import Session

from herald.core.config import get_settings
from herald.core.errors import Conflict, InvalidDefinition
from herald.core.ids import new_id
from herald.segments.definition import (
    JourneyCondition,
    ListCondition,
    MetricCondition,
    SegmentDefinition,
    definition_cost,
)
from herald.segments.membership import forget_rechecks, refresh
from herald.segments.sql import members_query
from models.campaigns import Campaign, CampaignPath
from models.enums import CampaignStatus, FlowStatus, SegmentStatus
from models.events import Metric
from models.flows import Flow, FlowVersion
from models.lists import ProfileList
from models.segments import Segment

# Statuses in which a flow or campaign reads its segments: a segment they use stays live.
_FLOW_USING = (FlowStatus.manual, FlowStatus.live)
_CAMPAIGN_USING = (CampaignStatus.draft, CampaignStatus.scheduled, CampaignStatus.sending)


def _location(loc: tuple) -> str:
    out = "definition"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("property", "metric", "in_list", "consent", "rfm_group", "journey"):
            continue  # the discriminated union's tag: the user never wrote it
        else:
            out += f".{part}"
    return out


def parse_definition(session: Session, raw: dict) -> SegmentDefinition:
    """The definition, checked against the language and against what exists now."""
    try:
        definition = SegmentDefinition.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {
                "field": _location(e.get("loc", ())),
                "reason": e.get("msg", "invalid").removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        raise InvalidDefinition("invalid segment definition", errors, count_more=False) from None
    problems = _unknown_references(session, definition) + _over_budget(definition)
    if problems:
        raise InvalidDefinition("invalid segment definition", problems, count_more=False)
    return definition


def _unknown_references(session: Session, definition: SegmentDefinition) -> list[dict]:
    metrics = set(session.scalars(select(Metric.name)))
    problems = []
    for g, group in enumerate(definition.all_of):
        for c, condition in enumerate(group.any_of):
            at = f"definition.all_of[{g}].any_of[{c}]"
            if isinstance(condition, MetricCondition) and condition.metric not in metrics:
                reason = (
                    f"unknown metric {condition.metric!r} (a metric exists once an event names it)"
                )
                problems.append({"field": f"{at}.metric", "reason": reason})
            elif isinstance(condition, ListCondition) and not session.get(
                ProfileList, condition.list_id
            ):
                reason = f"no list has id {condition.list_id!r}"
                problems.append({"field": f"{at}.list_id", "reason": reason})
            elif isinstance(condition, JourneyCondition) and not _run_exists(session, condition):
                reason = f"no {condition.run_kind} has id {condition.run_id!r}"
                problems.append({"field": f"{at}.run_id", "reason": reason})
    return problems


def _over_budget(definition: SegmentDefinition) -> list[dict]:
    # Routing re-checks every live segment an event touches, inside the batch: a definition's
    # cost is bounded here, and each statement by the router's budget at run time.
    cost, budget = definition_cost(definition), get_settings().segment_cost_budget
    if cost <= budget:
        return []
    reason = (
        f"costs {cost}, over the budget of {budget} (an event condition costs 2 plus 1 per "
        "filter, doubled for 'exactly'; any other condition 1 or 2): use fewer conditions or "
        "filters, or split it into several segments"
    )
    return [{"field": "definition", "reason": reason}]


def _run_exists(session: Session, condition: JourneyCondition) -> bool:
    if condition.run_kind == "flow":
        flow = session.get(Flow, condition.run_id)
        return flow is not None and flow.deleted_at is None
    return session.get(Campaign, condition.run_id) is not None


def create_segment(
    session: Session,
    *,
    name: str,
    description: str = "",
    definition: dict,
    origin: dict | None = None,
    now: datetime,
) -> Segment:
    """A new draft segment with its members computed (nothing is announced)."""
    parsed = parse_definition(session, definition)
    segment = Segment(
        id=new_id("seg"),
        name=name,
        description=description,
        definition=parsed.model_dump(mode="json", exclude_none=True),
        origin=origin,
        created_at=now,
        updated_at=now,
    )
    session.add(segment)
    session.flush()
    refresh(session, segment, now, organic=False)
    return segment


def update_segment(
    session: Session,
    segment: Segment,
    *,
    name: str | None = None,
    description: str | None = None,
    definition: dict | None = None,
    now: datetime,
) -> Segment:
    if name is not None:
        segment.name = name
    if description is not None:
        segment.description = description
    if definition is not None:
        parsed = parse_definition(session, definition).model_dump(mode="json", exclude_none=True)
        if parsed != segment.definition:
            segment.definition = parsed
            segment.version += 1
            session.flush()
            refresh(session, segment, now, organic=False)
            forget_rechecks(session, segment.id)
    segment.updated_at = now
    session.add(segment)
    return segment


def set_status(session: Session, segment: Segment, status: str, now: datetime) -> Segment:
    if status == SegmentStatus.draft and segment.status == SegmentStatus.live:
        users = segment_users(session, segment.id)
        if users:
            reason = f"the segment is in use by {', '.join(users[:5])}: stop those first"
            raise Conflict(f"status: {reason}", [{"field": "status", "reason": reason}])
    if status != segment.status:
        segment.status = status
        segment.updated_at = now
        session.add(segment)
        session.flush()
        if status == SegmentStatus.live:
            # Routing does not re-check drafts: catch up on what happened meanwhile, silently
            # (qualifying while a draft is not an organic entry).
            refresh(session, segment, now, organic=False)
        forget_rechecks(session, segment.id)
    return segment


def delete_segment(session: Session, segment: Segment) -> None:
    users = segment_users(session, segment.id)
    if users:
        raise Conflict(
            f"segment {segment.id!r} is in use by {', '.join(users[:5])}: stop those first"
        )
    session.delete(segment)


def segment_users(session: Session, segment_id: str) -> list[str]:
    """Running flows and unsent campaigns that read the segment, as "flow <id>" / "campaign <id>".

    Segment ids are unique random strings, so a textual search of the definitions is exact.
    """
    users = []
    flows = session.execute(
        select(Flow.id, FlowVersion.definition)
        .join(
            FlowVersion,
            (FlowVersion.flow_id == Flow.id) & (FlowVersion.version == Flow.latest_version),
        )
        .where(Flow.deleted_at.is_(None), Flow.status.in_(_FLOW_USING))
        .order_by(Flow.id)
    )
    users += [f"flow {fid}" for fid, d in flows if f'"{segment_id}"' in json.dumps(d)]
    paths = session.execute(
        select(Campaign.id, CampaignPath.include_segments, CampaignPath.exclude_segments)
        .join(CampaignPath, CampaignPath.campaign_id == Campaign.id)
        .where(Campaign.status.in_(_CAMPAIGN_USING))
        .order_by(Campaign.id)
    )
    for cid, include, exclude in paths:
        name = f"campaign {cid}"
        if segment_id in (include or []) + (exclude or []) and name not in users:
            users.append(name)
    return users


def live_segment_ids(session: Session) -> set[str]:
    return set(session.scalars(select(Segment.id).where(Segment.status == SegmentStatus.live)))


def preview(session: Session, definition: dict, now: datetime, sample_size: int) -> tuple:
    """(count, sample of profile ids) of a definition, saving nothing."""
    query = members_query(parse_definition(session, definition), now)
    count = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    sample = list(session.scalars(query.order_by("id").limit(sample_size))) if sample_size else []
    return count, sample
