"""Journey results: what happened to profiles at each flow step and campaign message.

For every step of a run (flow step or campaign message) the results are:
- processed: profiles the step was done for. A message counts when it was sent (a `sent`
  delivery); a flow's other steps when the enrollment's timeline says `processed`.
- opened / clicked / bounced: profiles with a `delivery_engagement` row for a delivery of the
  step. `record_engagement` (called by the router) attributes engagement events to the delivery
  their `$delivery_id` names and keeps the first of each kind per delivery.
- stopped: profiles whose run ended early, by reason, at the step where it ended.
- blocked: profiles whose message was not sent (a `skipped` delivery), by the skip reason.

Every count is a number of distinct profiles, computed from the same tables as the segment
clause (`journey_clause`), so a count always equals the length of its member list and the size
of a segment saved from it (until more profiles qualify).

Stop reasons are Herald's own exit reasons, not renamed:
- flows (`flow_enrollment.exit_reason`): `converted` (exit criteria met), `filter` (no longer
  passes the flow filters at a message), `operator` (enrollment cancelled), `flow_deleted`,
  `exited` (the send found the enrollment ended without a recorded reason). `exit_step` is not a
  stop: the profile reached the flow's own exit step, the journey ended as designed.
- campaigns (`campaign_exit`): `converted`; "at a message" means the message was then skipped
  for it (delivery reason `exited`).
Consent withdrawn and leaving a triggering segment do not end a flow enrollment in Herald: that
message is skipped (blocked, reason `no_consent` / `segment`) and the walk goes on. Blocked
reasons are herald/delivery/policy.py SkipReason values (no_consent, smart_sending, capped,
exited, filter, segment, missing_address, channel_disabled, profile_deleted, quiet_hours).
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select, union
from sqlmodel import Session

from herald.core.sql import upsert
from herald.routing.contract import RoutedItem
from herald.segments.definition import JourneyCondition
from models.campaigns import Campaign, CampaignExit, CampaignMessage, CampaignPath
from models.delivery import Delivery
from models.enums import Channel, OutboxKind
from models.flows import EnrollmentStep, Flow, FlowEnrollment, FlowVersion
from models.profile import Profile
from models.segments import DeliveryEngagement
from models.types import utcnow

_delivery = Delivery.__table__
_engagement = DeliveryEngagement.__table__
_enrollment = FlowEnrollment.__table__
_timeline = EnrollmentStep.__table__
_exit = CampaignExit.__table__
_profile = Profile.__table__

RESULTS = ("processed", "opened", "clicked", "bounced", "stopped", "blocked")
ENGAGEMENT_RESULTS = ("opened", "clicked", "bounced")
# Results that may leave out the step (then: anywhere in the run) and may name a reason.
RUN_WIDE_RESULTS = ("stopped", "blocked")
# Flow exit reasons that are not a stop: the flow's own exit step ends the journey as designed.
NOT_STOPPED = ("exit_step",)
CAMPAIGN_STOP_REASON = "converted"

_VERBS = {"Opened": "opened", "Clicked": "clicked", "Bounced": "bounced"}
_CHANNELS = frozenset(c.value for c in Channel)


# ---- engagement attribution ---------------------------------------------------------------------


def engagement_kind(metric_name: str | None) -> str | None:
    """`opened`, `clicked` or `bounced` for "Opened Email", "Clicked SMS", "Bounced Email", ...
    (a verb and a channel name); None for any other metric."""
    verb, _, channel = (metric_name or "").partition(" ")
    return _VERBS.get(verb) if channel.lower() in _CHANNELS else None


def record_engagement(session: Session, items: Iterable[RoutedItem]) -> set[str]:
    """Attributes engagement events to the deliveries their `$delivery_id` names.

    An event counts only for a sent delivery of its own profile; a `$delivery_id` that names no
    delivery, or another profile's, is ignored. Each (delivery, kind) keeps its earliest event,
    so routing an event twice, or a later open, changes nothing. Three set-based statements per
    batch. Returns the profiles whose journey results changed.
    """
    claims = [
        (item, kind, delivery_id)
        for item in items
        if item.kind is OutboxKind.event
        and (kind := engagement_kind(item.metric)) is not None
        and (delivery_id := _delivery_id(item.properties)) is not None
    ]
    if not claims:
        return set()
    deliveries = {
        row.id: row
        for row in session.execute(
            select(
                _delivery.c.id,
                _delivery.c.profile_id,
                _delivery.c.run_kind,
                _delivery.c.run_id,
                _delivery.c.step_id,
            )
            # The join skips deliveries whose profile is gone (engagement references profile).
            .join(_profile, _profile.c.id == _delivery.c.profile_id)
            .where(
                _delivery.c.id.in_({d for _, _, d in claims}),
                _delivery.c.status == "sent",
            )
        )
    }
    earliest: dict[tuple[str, str], dict[str, Any]] = {}
    for item, kind, delivery_id in claims:
        delivery = deliveries.get(delivery_id)
        if delivery is None or delivery.profile_id != item.profile_id:
            continue
        row = {
            "delivery_id": delivery_id,
            "kind": kind,
            "run_kind": delivery.run_kind,
            "run_id": delivery.run_id,
            "step_id": delivery.step_id,
            "profile_id": delivery.profile_id,
            "event_id": item.event_id,
            "at": item.time or utcnow(),
        }
        seen = earliest.get((delivery_id, kind))
        if seen is None or row["at"] < seen["at"]:
            earliest[(delivery_id, kind)] = row
    if not earliest:
        return set()
    recorded = {
        (r.delivery_id, r.kind): r.at
        for r in session.execute(
            select(_engagement.c.delivery_id, _engagement.c.kind, _engagement.c.at).where(
                _engagement.c.delivery_id.in_({d for d, _ in earliest})
            )
        )
    }
    rows = [
        row for key, row in earliest.items() if key not in recorded or row["at"] < recorded[key]
    ]
    if not rows:
        return set()
    # Insert, or move a recorded engagement earlier (an older event routed late, e.g. backfill).
    stmt = upsert(session, _engagement)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_engagement.c.delivery_id, _engagement.c.kind],
        set_={"event_id": stmt.excluded.event_id, "at": stmt.excluded.at},
        where=stmt.excluded.at < _engagement.c.at,
    )
    session.execute(stmt, rows)
    return {row["profile_id"] for row in rows}


def _delivery_id(properties: dict[str, Any] | None) -> str | None:
    value = (properties or {}).get("$delivery_id")
    max_length = _delivery.c.id.type.length
    return value if isinstance(value, str) and 0 < len(value) <= max_length else None


# ---- conditions ---------------------------------------------------------------------------------


class JourneyQueryError(ValueError):
    """A journey result request that names no valid result (`field` says which input)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def journey_condition(
    run_kind: str, run_id: str, step_id: str | None, result: str, reason: str | None
) -> JourneyCondition:
    """The segment condition for one result; JourneyQueryError names the input that is wrong."""
    if result not in RESULTS:
        raise JourneyQueryError("result", "must be one of: " + ", ".join(RESULTS))
    for field, value in (("run_id", run_id), ("step_id", step_id), ("reason", reason)):
        if value is not None and "\x00" in value:
            raise JourneyQueryError(field, "contains a NUL character")
    if step_id is None and result not in RUN_WIDE_RESULTS:
        raise JourneyQueryError("step_id", f"is required for result {result!r}")
    if reason is not None and result not in RUN_WIDE_RESULTS:
        raise JourneyQueryError("reason", "only stopped and blocked results have a reason")
    try:
        return JourneyCondition(
            run_kind=run_kind, run_id=run_id, step_id=step_id, result=result, reason=reason
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "result"
        raise JourneyQueryError(field, error["msg"].removeprefix("Value error, ")) from None


def journey_clause(condition: JourneyCondition, profile_id_col) -> ColumnElement[bool]:
    """Does the profile in `profile_id_col` have this result? (semantics: the module docstring)

    Each part is `profile_id_col IN (<the run's profiles with the result>)`: uncorrelated
    subqueries over the run's indexes (delivery, delivery_engagement, flow_enrollment,
    campaign_exit), which both SQLite and PostgreSQL evaluate once per statement as a semi-join,
    whether the outer query is every profile or a handful.
    """
    parts = _profile_sets(condition)
    if not parts:
        return false()
    return and_(*(or_(*(profile_id_col.in_(q) for q in alternatives)) for alternatives in parts))


def _profile_sets(c: JourneyCondition) -> list[list[Select]]:
    """An AND of ORs of profile-id subqueries: the profiles with the condition's result."""
    if c.result == "processed":
        sent = [_deliveries(c.run_kind, c.run_id, c.step_id, "sent")]
        if c.run_kind == "flow":
            sent.append(
                select(_timeline.c.profile_id).where(
                    _timeline.c.flow_id == c.run_id,
                    _timeline.c.step_id == c.step_id,
                    _timeline.c.outcome == "processed",
                )
            )
        return [sent]
    if c.result in ENGAGEMENT_RESULTS:
        return [
            [
                select(_engagement.c.profile_id).where(
                    _engagement.c.run_kind == c.run_kind,
                    _engagement.c.run_id == c.run_id,
                    _engagement.c.step_id == c.step_id,
                    _engagement.c.kind == c.result,
                )
            ]
        ]
    if c.result == "blocked":
        return [[_deliveries(c.run_kind, c.run_id, c.step_id, "skipped", c.reason)]]
    # stopped
    if c.run_kind == "flow":
        stmt = select(_enrollment.c.profile_id).where(_flow_stopped(c.run_id))
        if c.reason is not None:
            stmt = stmt.where(_enrollment.c.exit_reason == c.reason)
        if c.step_id is not None:
            stmt = stmt.where(_enrollment.c.current_step == c.step_id)
        return [[stmt]]
    if c.reason not in (None, CAMPAIGN_STOP_REASON):
        return []
    parts = [[select(_exit.c.profile_id).where(_exit.c.campaign_id == c.run_id)]]
    if c.step_id is not None:
        parts.append([_deliveries("campaign", c.run_id, c.step_id, "skipped", "exited")])
    return parts


def _deliveries(
    run_kind: str, run_id: str, step_id: str | None, status: str, reason: str | None = None
) -> Select:
    stmt = select(_delivery.c.profile_id).where(
        _delivery.c.run_kind == run_kind,
        _delivery.c.run_id == run_id,
        _delivery.c.status == status,
    )
    if step_id is not None:
        stmt = stmt.where(_delivery.c.step_id == step_id)
    if reason is not None:
        stmt = stmt.where(_delivery.c.reason == reason)
    return stmt


def _flow_stopped(flow_id: str) -> ColumnElement[bool]:
    return and_(
        _enrollment.c.flow_id == flow_id,
        _enrollment.c.exit_reason.is_not(None),
        _enrollment.c.exit_reason.not_in(NOT_STOPPED),
    )


# ---- steps of a run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStep:
    step_id: str
    type: str  # a flow step type, or "message" for a campaign message
    channel: str | None = None


def run_steps(session: Session, run_kind: str, run_id: str) -> list[RunStep] | None:
    """The steps a run has results for, in reading order; None when there is no such run.

    A flow's steps are those of its newest version, then any step only older versions have
    (enrollments keep running on the version they started on). A campaign's are its messages,
    path by path in send-time order.
    """
    if run_kind == "flow":
        flow = session.get(Flow, run_id)
        if flow is None or flow.deleted_at is not None:
            return None
        definitions = session.scalars(
            select(FlowVersion.definition)
            .where(FlowVersion.flow_id == run_id)
            .order_by(FlowVersion.version.desc())
        )
        steps: dict[str, RunStep] = {}
        for definition in definitions:
            for step in definition.get("steps", []):
                steps.setdefault(
                    step["id"], RunStep(step["id"], step.get("type", ""), step.get("channel"))
                )
        return list(steps.values())
    if run_kind == "campaign":
        if session.get(Campaign, run_id) is None:
            return None
        rows = session.execute(
            select(CampaignMessage.id, CampaignMessage.channel)
            .join(CampaignPath, CampaignPath.id == CampaignMessage.path_id)
            .where(CampaignMessage.campaign_id == run_id)
            .order_by(
                CampaignPath.position,
                CampaignMessage.send_at_local,
                CampaignMessage.position,
                CampaignMessage.id,
            )
        )
        return [RunStep(r.id, "message", r.channel) for r in rows]
    raise ValueError(f"unknown run kind {run_kind!r}")


# ---- reports ------------------------------------------------------------------------------------


def run_results(session: Session, run_kind: str, run_id: str) -> dict[str, Any]:
    """Per step: processed, opened, clicked, bounced, stopped and blocked by reason; and for the
    whole run: stopped and blocked by reason. Every number counts distinct profiles.

    `{"run_kind", "run_id", "steps": [{"step_id", "type", "channel", "processed", "opened",
    "clicked", "bounced", "stopped": {reason: n}, "blocked": {reason: n}}], "stopped": {...},
    "blocked": {...}}`. Steps with results that the run no longer lists come last.
    """
    counts: dict[str, dict[str, Any]] = defaultdict(_empty_counts)
    for step_id, n in session.execute(_processed_by_step(run_kind, run_id)):
        counts[step_id]["processed"] = n
    engagement = (
        select(_engagement.c.step_id, _engagement.c.kind, _distinct_profiles(_engagement))
        .where(_engagement.c.run_kind == run_kind, _engagement.c.run_id == run_id)
        .group_by(_engagement.c.step_id, _engagement.c.kind)
    )
    for step_id, kind, n in session.execute(engagement):
        counts[step_id][kind] = n
    skipped = _deliveries(run_kind, run_id, None, "skipped").where(_delivery.c.reason.is_not(None))
    blocked = skipped.with_only_columns(
        _delivery.c.step_id, _delivery.c.reason, _distinct_profiles(_delivery)
    ).group_by(_delivery.c.step_id, _delivery.c.reason)
    for step_id, reason, n in session.execute(blocked):
        counts[step_id]["blocked"][reason] = n
    stopped_by_step, stopped_in_run = _stopped(session, run_kind, run_id)
    for step_id, reason, n in stopped_by_step:
        counts[step_id]["stopped"][reason] = n

    steps = run_steps(session, run_kind, run_id) or []
    listed = {s.step_id for s in steps}
    steps += [RunStep(step_id, "unknown") for step_id in sorted(set(counts) - listed)]
    blocked_in_run = skipped.with_only_columns(
        _delivery.c.reason, _distinct_profiles(_delivery)
    ).group_by(_delivery.c.reason)
    return {
        "run_kind": run_kind,
        "run_id": run_id,
        "steps": [
            {"step_id": s.step_id, "type": s.type, "channel": s.channel, **counts[s.step_id]}
            for s in steps
        ],
        "stopped": stopped_in_run,
        "blocked": dict(session.execute(blocked_in_run).tuples().all()),
    }


def _empty_counts() -> dict[str, Any]:
    return {
        "processed": 0,
        "opened": 0,
        "clicked": 0,
        "bounced": 0,
        "stopped": {},
        "blocked": {},
    }


def _distinct_profiles(table):
    return func.count(table.c.profile_id.distinct())


def _processed_by_step(run_kind: str, run_id: str) -> Select:
    sent = select(_delivery.c.step_id, _delivery.c.profile_id).where(
        _delivery.c.run_kind == run_kind,
        _delivery.c.run_id == run_id,
        _delivery.c.status == "sent",
    )
    if run_kind == "flow":
        passed = select(_timeline.c.step_id, _timeline.c.profile_id).where(
            _timeline.c.flow_id == run_id, _timeline.c.outcome == "processed"
        )
        # UNION (not ALL) leaves one row per (step, profile): count(*) is distinct profiles.
        both = union(sent, passed).subquery()
        return select(both.c.step_id, func.count()).group_by(both.c.step_id)
    return sent.with_only_columns(_delivery.c.step_id, _distinct_profiles(_delivery)).group_by(
        _delivery.c.step_id
    )


def _stopped(session: Session, run_kind: str, run_id: str) -> tuple[list, dict[str, int]]:
    """(step_id, reason, profiles) per step where runs stopped, and profiles by reason."""
    if run_kind == "flow":
        by_step = (
            select(
                _enrollment.c.current_step,
                _enrollment.c.exit_reason,
                _distinct_profiles(_enrollment),
            )
            .where(_flow_stopped(run_id), _enrollment.c.current_step.is_not(None))
            .group_by(_enrollment.c.current_step, _enrollment.c.exit_reason)
        )
        in_run = (
            select(_enrollment.c.exit_reason, _distinct_profiles(_enrollment))
            .where(_flow_stopped(run_id))
            .group_by(_enrollment.c.exit_reason)
        )
        return list(session.execute(by_step)), dict(session.execute(in_run).tuples().all())
    by_message = (
        _deliveries("campaign", run_id, None, "skipped", "exited")
        .with_only_columns(_delivery.c.step_id, _distinct_profiles(_delivery))
        .join(
            _exit,
            and_(_exit.c.campaign_id == run_id, _exit.c.profile_id == _delivery.c.profile_id),
        )
        .group_by(_delivery.c.step_id)
    )
    exits = session.execute(
        select(func.count()).select_from(_exit).where(_exit.c.campaign_id == run_id)
    ).scalar_one()
    return (
        [(step_id, CAMPAIGN_STOP_REASON, n) for step_id, n in session.execute(by_message)],
        {CAMPAIGN_STOP_REASON: exits} if exits else {},
    )


def result_members(
    session: Session,
    run_kind: str,
    run_id: str,
    step_id: str | None,
    result: str,
    reason: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[str], str | None]:
    """One page of the profiles with a result, by profile id; and the cursor of the next page
    (the last id of this one), None on the last page. Runs the segment clause itself, so the
    list is exactly what a segment saved from the result holds. JourneyQueryError for bad input.
    """
    condition = journey_condition(run_kind, run_id, step_id, result, reason)
    stmt = (
        select(_profile.c.id)
        .where(journey_clause(condition, _profile.c.id))
        .order_by(_profile.c.id)
        .limit(limit + 1)
    )
    if cursor is not None:
        stmt = stmt.where(_profile.c.id > cursor)
    ids = list(session.scalars(stmt))
    page = ids[:limit]
    return page, (page[-1] if len(ids) > limit else None)
