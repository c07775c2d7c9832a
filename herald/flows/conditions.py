"""Profile conditions (flow filters, conditional splits) evaluated against the database.

One small query per condition kind; a flow has a handful of conditions, and the split or send
they guard does far more work. Segment conditions run the segment's
compiled definition for the one profile (herald/segment_membership.is_member).
"""

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import Session

from herald.core.errors import PermanentError
from herald.delivery.templates import template_variables
from herald.flows.graph import (
    ConsentCondition,
    ListCondition,
    MetricCountCondition,
    PropertyCondition,
    RfmCondition,
    SegmentCondition,
)
from herald.flows.property_filters import compare, lookup
from herald.segments.membership import is_member
from models.events import Event, Metric
from models.lists import ListMembership
from models.profile import Consent, Profile


class ConditionUnavailable(PermanentError, ValueError):
    """A condition kind this installation cannot evaluate (yet): a permanent error."""


def profile_data(profile: Profile) -> dict:
    """What property conditions see: exactly what templates see as `profile`."""
    return template_variables(profile.model_dump(), {})["profile"]


def profile_matches(session: Session, profile_id: str, conditions: list, now: datetime) -> bool:
    """True when every condition holds; False also when the profile no longer exists."""
    if not conditions:
        return True
    profile = session.get(Profile, profile_id)
    if profile is None:
        return False
    return all(_holds(session, profile, c, now) for c in conditions)


def _holds(session: Session, profile: Profile, condition, now: datetime) -> bool:
    if isinstance(condition, PropertyCondition):
        data = profile_data(profile)
        return compare(lookup(data, condition.property), condition.operator, condition.value)
    if isinstance(condition, MetricCountCondition):
        count = _metric_count(session, profile.id, condition, now)
        return compare(count, condition.operator, condition.count)
    if isinstance(condition, ListCondition):
        member = session.get(ListMembership, (condition.list_id, profile.id)) is not None
        return member == condition.member
    if isinstance(condition, ConsentCondition):
        row = session.get(Consent, (profile.id, condition.channel))
        status = row.status if row else "never_subscribed"
        return status == condition.status
    if isinstance(condition, RfmCondition):
        return (profile.properties or {}).get("rfm_group") in condition.groups
    if isinstance(condition, SegmentCondition):
        return is_member(session, condition.segment_id, profile.id, now) == condition.member
    raise ConditionUnavailable(f"unknown condition {condition!r}")


def _metric_count(
    session: Session, profile_id: str, condition: MetricCountCondition, now: datetime
) -> int:
    stmt = (
        select(func.count())
        .select_from(Event)
        .join(Metric, Metric.id == Event.metric_id)
        .where(Event.profile_id == profile_id, Metric.name == condition.metric)
    )
    if condition.within_days is not None:
        stmt = stmt.where(Event.time >= now - timedelta(days=condition.within_days))
    return session.execute(stmt).scalar_one()
