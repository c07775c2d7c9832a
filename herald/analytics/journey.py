"""Journey results: what happened to profiles at each flow step and campaign message.

For every step of a run (flow step or campaign message) the results are:
- processed: profiles the step was done for. A message counts when it was sent (a `sent`
  delivery); a flow's other steps when the enrollment's timeline says `processed`.
- opened / clicked / bounced: profiles with a `delivery_engagement` row for a delivery of the
  step. `record_engagement` (engagement.py, called by the router) attributes engagement events
  to the delivery their `$delivery_id` names and keeps the first of each kind per delivery.
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

from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, and_, false, or_, select
from sqlmodel import Session

from herald.core.errors import Invalid, NotFound
from herald.segments.definition import JourneyCondition
from models.campaigns import Campaign, CampaignExit, CampaignMessage, CampaignPath
from models.delivery import Delivery
from models.flows import EnrollmentStep, Flow, FlowEnrollment, FlowVersion
from models.profile import Profile
from models.segments import DeliveryEngagement

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


# ---- conditions ---------------------------------------------------------------------------------


class JourneyQueryError(Invalid):
    """A journey result request that names no valid result (`field` says which input)."""


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
        sent = [delivery_profiles(c.run_kind, c.run_id, c.step_id, "sent")]
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
        return [[delivery_profiles(c.run_kind, c.run_id, c.step_id, "skipped", c.reason)]]
    # stopped
    if c.run_kind == "flow":
        stmt = select(_enrollment.c.profile_id).where(flow_stopped(c.run_id))
        if c.reason is not None:
            stmt = stmt.where(_enrollment.c.exit_reason == c.reason)
        if c.step_id is not None:
            stmt = stmt.where(_enrollment.c.current_step == c.step_id)
        return [[stmt]]
    if c.reason not in (None, CAMPAIGN_STOP_REASON):
        return []
    parts = [[select(_exit.c.profile_id).where(_exit.c.campaign_id == c.run_id)]]
    if c.step_id is not None:
        parts.append([delivery_profiles("campaign", c.run_id, c.step_id, "skipped", "exited")])
    return parts


def delivery_profiles(
    run_kind: str, run_id: str, step_id: str | None, status: str, reason: str | None = None
) -> Select:
    stmt = select(_delivery.c.profile_id).where(
        _delivery.c.run_kind == run_kind,
        _delivery.c.run_id == run_id,
        _delivery.c.status == status,
        _delivery.c.test.is_(False),  # a test send is nobody's journey
    )
    if step_id is not None:
        stmt = stmt.where(_delivery.c.step_id == step_id)
    if reason is not None:
        stmt = stmt.where(_delivery.c.reason == reason)
    return stmt


def flow_stopped(flow_id: str) -> ColumnElement[bool]:
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


def result_condition(
    session: Session,
    run_kind: str,
    run_id: str,
    step_id: str | None,
    result: str,
    reason: str | None,
) -> JourneyCondition:
    """The result's condition, for a run that exists (NotFound) and a step it has (Invalid)."""
    steps = run_steps(session, run_kind, run_id)
    if steps is None:
        raise NotFound(run_kind, run_id)
    condition = journey_condition(run_kind, run_id, step_id, result, reason)
    if step_id is not None and step_id not in {s.step_id for s in steps}:
        what = "step of the flow" if run_kind == "flow" else "message of the campaign"
        raise Invalid("step_id", f"{step_id!r} is not a {what}")
    return condition


def members_query(condition: JourneyCondition) -> Select:
    """The ids of the profiles with the result. It runs the segment clause itself, so the list
    is exactly what a segment saved from the result holds."""
    return select(_profile.c.id).where(journey_clause(condition, _profile.c.id))
