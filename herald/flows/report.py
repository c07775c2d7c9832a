"""A flow's step report: what every step did, over all the flow's versions."""

from sqlalchemy import func, select
from sqlmodel import Session

from herald.flows.graph import FlowDefinition
from herald.flows.steps import StepOutcome
from herald.flows.store import load_flow
from models.delivery import Delivery
from models.flow_dto import FlowReport, StepReport
from models.flows import EnrollmentStep, FlowVersion

_UNSPECIFIED = "unspecified"


def flow_report(session: Session, flow_id: str) -> FlowReport:
    """Per step, over all versions: entered, processed, queued, held, skipped and exited by
    reason, and deliveries by status. Steps of the newest version are listed even at zero."""
    s = EnrollmentStep.__table__.c
    d = Delivery.__table__.c
    flow = load_flow(session, flow_id)
    latest = session.get(FlowVersion, (flow_id, flow.latest_version))
    outcomes = session.execute(
        select(s.step_id, s.step_type, s.outcome, s.reason, func.count())
        .where(s.flow_id == flow_id)
        .group_by(s.step_id, s.step_type, s.outcome, s.reason)
    ).all()
    deliveries = session.execute(
        select(d.step_id, d.status, func.count())
        .where(d.run_kind == "flow", d.run_id == flow_id, d.test.is_(False))
        .group_by(d.step_id, d.status)
    ).all()

    steps: dict[str, StepReport] = {}
    if latest is not None:
        for step in FlowDefinition.model_validate(latest.definition).steps:
            steps.setdefault(step.id, StepReport(step_id=step.id, step_type=step.type))

    def report(step_id: str, step_type: str | None = None) -> StepReport:
        if step_id not in steps:
            steps[step_id] = StepReport(step_id=step_id, step_type=step_type)
        return steps[step_id]

    for step_id, step_type, outcome, reason, count in sorted(outcomes, key=_sort_key):
        line = report(step_id, step_type)
        if outcome in (StepOutcome.skipped, StepOutcome.exited):
            by_reason = getattr(line, outcome)
            key = reason or _UNSPECIFIED
            by_reason[key] = by_reason.get(key, 0) + count
        elif outcome in (
            StepOutcome.entered,
            StepOutcome.processed,
            StepOutcome.queued,
            StepOutcome.held,
        ):
            setattr(line, outcome, getattr(line, outcome) + count)
    for step_id, status, count in sorted(deliveries, key=_sort_key):
        line = report(step_id)
        line.deliveries[status] = line.deliveries.get(status, 0) + count
    return FlowReport(flow_id=flow_id, steps=list(steps.values()))


def _sort_key(row) -> tuple:
    # Steps only older versions had are listed in a stable order, whatever the backend returns.
    return tuple("" if v is None else str(v) for v in row)
