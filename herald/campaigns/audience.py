"""Campaign audiences as set-based SQL: who a path sends to, and who left the campaign.

A path's audience is every profile in any of its included lists, minus the members of any of its
excluded lists, minus the audience of every earlier path (a profile in several paths gets only
the first one in `path_order`). Each rule is an EXISTS / NOT EXISTS over `list_membership`
(primary key list_id, profile_id) correlated with `profile`, so a page of the audience is an
index walk over profile ids and never a list of ids in Python. The same SQL runs on SQLite and
PostgreSQL.

Segments are included and excluded like lists, through their compiled definitions
(herald/segments/sql.py, evaluated when the audience is read): callers pass `segments`, the clause
of every segment the paths name. A path naming a segment that is not there raises ValueError
rather than sending to a different audience than the one the marketer chose.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, exists, false, func, not_, or_, select

from herald.campaigns.contract import CampaignSettings, PathSnapshot
from herald.campaigns.waves import valid_zones
from models.campaigns import CampaignExit
from models.events import Event, Metric
from models.lists import ListMembership
from models.profile import Profile

_profile = Profile.__table__
_membership = ListMembership.__table__
_exit = CampaignExit.__table__
_event = Event.__table__
_metric = Metric.__table__


# ---- timezones ----------------------------------------------------------------------------------


def timezone_condition(zones: Sequence[str], fallback: str) -> ColumnElement[bool]:
    """Profiles whose effective zone (see `effective_zone`) is one of `zones`."""
    wanted = set(zones)
    if fallback not in wanted:
        return _profile.c.timezone.in_(sorted(wanted & valid_zones()) or [""])
    # The fallback zone also covers every profile without a known zone: keep whoever is not in
    # some other known zone.
    others = sorted(valid_zones() - wanted)
    return or_(_profile.c.timezone.is_(None), _profile.c.timezone.not_in(others))


# ---- audiences ----------------------------------------------------------------------------------


def _in_any(list_ids: Sequence[str]) -> ColumnElement[bool]:
    if not list_ids:
        return false()
    return exists().where(
        _membership.c.profile_id == _profile.c.id, _membership.c.list_id.in_(list(list_ids))
    )


SegmentClauses = Mapping[str, ColumnElement[bool]]


def _segment(segments: SegmentClauses, path: PathSnapshot, segment_id: str) -> ColumnElement[bool]:
    if segment_id not in segments:
        raise ValueError(f"path {path.id!r} names segment {segment_id!r}, which does not exist")
    return segments[segment_id]


def _own_audience(path: PathSnapshot, segments: SegmentClauses) -> ColumnElement[bool]:
    """Included minus excluded, before first-path-wins."""
    included = [_in_any(path.include_lists)] if path.include_lists else []
    included += [_segment(segments, path, s) for s in path.include_segments]
    if not included:
        return false()
    excluded = [_in_any(path.exclude_lists)] if path.exclude_lists else []
    excluded += [_segment(segments, path, s) for s in path.exclude_segments]
    condition = or_(*included)
    if excluded:
        condition = and_(condition, not_(or_(*excluded)))
    return condition


def segments_named(paths: Sequence[PathSnapshot]) -> set[str]:
    """Every segment id the paths include or exclude."""
    return {s for p in paths for s in (*p.include_segments, *p.exclude_segments)}


def earlier_paths(
    settings: CampaignSettings, path: PathSnapshot, all_paths: Sequence[PathSnapshot]
) -> list[PathSnapshot]:
    """The paths before `path` in `settings.path_order` (by position when no order is given)."""
    by_id = {p.id: p for p in all_paths}
    by_id.setdefault(path.id, path)
    order = settings.path_order or [
        p.id for p in sorted(by_id.values(), key=lambda p: (p.position, p.id))
    ]
    if path.id not in order:
        raise ValueError(f"path {path.id!r} is not in the campaign's path order")
    before = order[: order.index(path.id)]
    missing = [path_id for path_id in before if path_id not in by_id]
    if missing:
        raise ValueError(
            f"earlier path {missing[0]!r} is not among the paths given: pass all the campaign's"
            " paths so that a profile in several audiences gets only the first"
        )
    return [by_id[path_id] for path_id in before]


def audience_condition(
    settings: CampaignSettings,
    path: PathSnapshot,
    all_paths: Sequence[PathSnapshot] = (),
    segments: SegmentClauses | None = None,
) -> ColumnElement[bool]:
    """The WHERE clause over `profile` that selects the path's audience."""
    segments = segments or {}
    condition = _own_audience(path, segments)
    for earlier in earlier_paths(settings, path, all_paths):
        # The union of the earlier paths' final audiences is the union of their own audiences.
        condition = and_(condition, not_(_own_audience(earlier, segments)))
    return condition


def path_audience(
    settings: CampaignSettings,
    path: PathSnapshot,
    all_paths: Sequence[PathSnapshot] = (),
    segments: SegmentClauses | None = None,
) -> Select:
    """SELECT profile.id for the path's audience (first path wins; see the module docstring).

    `all_paths` are the campaign's paths (any order; `settings.path_order` orders them); it may
    be empty only when no path comes before `path`.
    """
    return select(_profile.c.id).where(audience_condition(settings, path, all_paths, segments))


def campaign_audience(
    paths: Sequence[PathSnapshot], segments: SegmentClauses | None = None
) -> Select:
    """SELECT profile.id for everyone any path sends to: the union of the paths' audiences."""
    if not paths:
        return select(_profile.c.id).where(false())
    return select(_profile.c.id).where(or_(*(_own_audience(p, segments or {}) for p in paths)))


def count_of(query: Select) -> Select:
    """SELECT count(*) over an audience query."""
    return select(func.count()).select_from(query.subquery())


# ---- exit criteria ------------------------------------------------------------------------------


def exit_metric_id(metric: str | None) -> Select:
    """SELECT metric.id of a campaign's conversion metric (none when the name is unknown)."""
    return select(_metric.c.id).where(_metric.c.name == metric)


def exit_recorded(campaign_id: str, profile_id) -> ColumnElement[bool]:
    """EXISTS a campaign_exit row for the profile (a column or a value)."""
    return exists().where(_exit.c.campaign_id == campaign_id, _exit.c.profile_id == profile_id)


def converted_since(metric_id: int, started_at: datetime, profile_id) -> ColumnElement[bool]:
    """EXISTS a conversion event of the profile at or after the start
    (index ix_event_profile_metric_time)."""
    return exists().where(
        _event.c.profile_id == profile_id,
        _event.c.metric_id == metric_id,
        _event.c.time >= started_at,
    )


def exited_condition(
    campaign_id: str, metric_id: int | None, started_at: datetime | None, profile_id
) -> ColumnElement[bool]:
    """Has `profile_id` (a column or a value) left the campaign?

    The rule, one for the bulk sender and the per-message deliver activity: an exit row for the
    campaign, or a conversion event (the exit metric) at or after the campaign's start. Checking
    the events themselves makes the exclusion independent of how far routing lags behind.
    Before the campaign starts nobody has exited: conversions before the start never exclude.
    """
    if started_at is None:
        return false()
    recorded = exit_recorded(campaign_id, profile_id)
    if metric_id is None:
        return recorded
    return or_(recorded, converted_since(metric_id, started_at, profile_id))


def conversions(metric_id: int, started_at: datetime, profile_ids: Sequence[str]) -> Select:
    """SELECT profile_id, id, time of the conversions (at or after the start) of some profiles,
    earliest first per profile."""
    return (
        select(_event.c.profile_id, _event.c.id, _event.c.time)
        .where(
            _event.c.profile_id.in_(list(profile_ids)),
            _event.c.metric_id == metric_id,
            _event.c.time >= started_at,
        )
        .order_by(_event.c.profile_id, _event.c.time, _event.c.id)
    )
