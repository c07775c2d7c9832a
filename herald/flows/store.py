"""Flows in the database: create, rename or change status, new versions, delete.

Every definition is validated as a whole (validation.py) against the metrics, lists and segments
that exist now, and refused with all its problems at once. Replacing a definition stores a new
version; running enrollments keep the version they started on, new ones start on the newest.
"""

from sqlalchemy import select
from sqlmodel import Session

from herald.core.errors import Invalid, InvalidDefinition, NotFound
from herald.core.ids import new_id
from herald.flows.cancellation import cancel_enrollments
from herald.flows.graph import FlowDefinition, ListTrigger, MetricTrigger, SegmentTrigger
from herald.flows.validation import validate_definition
from herald.segments.store import live_segment_ids
from models.enums import FlowStatus, SegmentStatus
from models.events import Metric
from models.flow_dto import FlowCreate, FlowPublic, FlowSummary, FlowUpdate
from models.flows import Flow, FlowEnrollment, FlowVersion
from models.lists import ProfileList
from models.segments import Segment
from models.types import utcnow

# Statuses in which enrollments run: the definition must be valid against today's lists/metrics.
RUNNING_STATUSES = (FlowStatus.manual, FlowStatus.live)


def load_flow(session: Session, flow_id: str, for_update: bool = False) -> Flow:
    row = session.get(Flow, flow_id, with_for_update=for_update)
    if row is None or row.deleted_at is not None:
        raise NotFound("flow", flow_id)
    return row


def latest(session: Session, flow: Flow) -> FlowVersion:
    row = session.get(FlowVersion, (flow.id, flow.latest_version))
    if row is None:  # written in the same transaction as the flow: a broken database
        raise RuntimeError(f"flow {flow.id} has no version {flow.latest_version}")
    return row


def summary(flow: Flow) -> FlowSummary:
    return FlowSummary.model_validate({**flow.model_dump(), "version": flow.latest_version})


def public(flow: Flow, version: FlowVersion) -> FlowPublic:
    return FlowPublic(**summary(flow).model_dump(), definition=version.definition)


def require_valid(session: Session, defn: FlowDefinition) -> None:
    """Raises InvalidDefinition listing every problem of `defn` against what exists now."""
    problems = validate_definition(
        defn,
        known_metrics=set(session.scalars(select(Metric.name))),
        known_lists=set(session.scalars(select(ProfileList.id))),
        known_segments=live_segment_ids(session),
        draft_segments=set(
            session.scalars(select(Segment.id).where(Segment.status == SegmentStatus.draft))
        ),
    )
    if problems:
        raise InvalidDefinition(f"the flow definition has {len(problems)} problem(s)", problems)


def create_flow(session: Session, body: FlowCreate) -> FlowPublic:
    defn = body.definition()
    require_valid(session, defn)
    flow = Flow(id=new_id("fl"), name=body.name, status=body.status, latest_version=1)
    _route_on(flow, defn)
    version = FlowVersion(flow_id=flow.id, version=1, definition=_stored(defn))
    session.add(flow)
    session.flush()  # the flow row first: the version references it
    session.add(version)
    return public(flow, version)


def update_flow(session: Session, flow_id: str, body: FlowUpdate) -> FlowPublic:
    """Renames or changes status; manual and live need a definition valid today."""
    flow = load_flow(session, flow_id, for_update=True)
    current = latest(session, flow)
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None:
            raise Invalid(name, "must not be null")
        setattr(flow, name, value)
    if "status" in body.model_fields_set and flow.status in RUNNING_STATUSES:
        # Lists can be deleted after a flow was saved: re-check before anything runs.
        require_valid(session, FlowDefinition.model_validate(current.definition))
    flow.updated_at = utcnow()
    session.add(flow)
    return public(flow, current)


def replace_definition(session: Session, flow_id: str, defn: FlowDefinition) -> FlowPublic:
    """A new version when anything changed; the same definition again changes nothing."""
    # Locked so two concurrent edits get versions N+1 and N+2, not one conflict.
    flow = load_flow(session, flow_id, for_update=True)
    require_valid(session, defn)
    current = latest(session, flow)
    if _stored(FlowDefinition.model_validate(current.definition)) == _stored(defn):
        return public(flow, current)
    version = FlowVersion(
        flow_id=flow.id, version=flow.latest_version + 1, definition=_stored(defn)
    )
    flow.latest_version = version.version
    _route_on(flow, defn)
    flow.updated_at = utcnow()
    session.add(flow)
    session.add(version)
    return public(flow, version)


def delete_flow(session: Session, flow_id: str) -> list[str]:
    """Soft-deletes the flow and cancels its running enrollments; returns their workflow ids.

    The caller asks Temporal to stop those workflows after the commit (cancellation.py).
    """
    flow = load_flow(session, flow_id, for_update=True)
    flow.deleted_at = flow.updated_at = utcnow()
    session.add(flow)
    running = FlowEnrollment.__table__.c.flow_id == flow_id
    return cancel_enrollments(session, "flow_deleted", running)


def _route_on(flow: Flow, defn: FlowDefinition) -> None:
    """Copies what routing matches on from the definition onto the flow row."""
    trigger = defn.trigger
    flow.trigger_type = trigger.type
    if isinstance(trigger, MetricTrigger):
        flow.trigger_key = trigger.metric
    elif isinstance(trigger, ListTrigger):
        flow.trigger_key = trigger.list_id
    elif isinstance(trigger, SegmentTrigger):
        flow.trigger_key = trigger.segment_id
    else:
        flow.trigger_key = trigger.property
    flow.exit_metric = defn.exit_metric


def _stored(defn: FlowDefinition) -> dict:
    return defn.model_dump(mode="json")
