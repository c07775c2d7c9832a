"""Journey result counts of a run, step by step (the semantics: journey.py's docstring)."""

from collections import defaultdict
from typing import Any

from sqlalchemy import Select, and_, func, select, union
from sqlmodel import Session

from herald.analytics.journey import (
    CAMPAIGN_STOP_REASON,
    RunStep,
    delivery_profiles,
    flow_stopped,
    run_steps,
)
from models.campaigns import CampaignExit
from models.delivery import Delivery
from models.flows import EnrollmentStep, FlowEnrollment
from models.segments import DeliveryEngagement

_delivery = Delivery.__table__
_engagement = DeliveryEngagement.__table__
_enrollment = FlowEnrollment.__table__
_timeline = EnrollmentStep.__table__
_exit = CampaignExit.__table__


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
    skipped = delivery_profiles(run_kind, run_id, None, "skipped").where(
        _delivery.c.reason.is_not(None)
    )
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
        _delivery.c.test.is_(False),
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
            .where(flow_stopped(run_id), _enrollment.c.current_step.is_not(None))
            .group_by(_enrollment.c.current_step, _enrollment.c.exit_reason)
        )
        in_run = (
            select(_enrollment.c.exit_reason, _distinct_profiles(_enrollment))
            .where(flow_stopped(run_id))
            .group_by(_enrollment.c.exit_reason)
        )
        return list(session.execute(by_step)), dict(session.execute(in_run).tuples().all())
    by_message = (
        delivery_profiles("campaign", run_id, None, "skipped", "exited")
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
