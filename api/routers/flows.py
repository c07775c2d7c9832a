"""Flows: create, read, rename or change status, replace the definition (versioned), delete.

Every definition is validated as a whole (herald.flow_validation) and refused with all its
problems at once. Replacing a definition stores a new version; running enrollments keep the
version they started on, new ones start on the newest.
"""

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response, status
from sqlalchemy import select
from sqlmodel import Session

from api.deps import EngineDep, require_private_key
from api.errors import ApiError, invalid, not_found
from api.pagination import CursorQuery, LimitQuery, Page, decode_cursor, keyset_page
from api.temporal_link import stop_enrollments
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.flows.cancellation import cancel_enrollments
from herald.flows.graph import FlowDefinition, ListTrigger, MetricTrigger, SegmentTrigger
from herald.flows.validation import validate_definition
from herald.segments.store import live_segment_ids
from models.events import Metric
from models.flow_dto import (
    FlowCreate,
    FlowDefinitionIn,
    FlowPublic,
    FlowStatus,
    FlowSummary,
    FlowUpdate,
    FlowVersionPublic,
)
from models.flows import Flow, FlowEnrollment, FlowVersion
from models.lists import ProfileList
from models.segments import Segment
from models.types import utcnow

router = APIRouter(prefix="/v1/flows", tags=["flows"], dependencies=[Depends(require_private_key)])

# Statuses in which enrollments run: the definition must be valid against today's lists/metrics.
_RUNNING_STATUSES = ("manual", "live")


def load_flow(session: Session, flow_id: str, for_update: bool = False) -> Flow:
    row = session.get(Flow, flow_id, with_for_update=for_update)
    if row is None or row.deleted_at is not None:
        raise not_found("flow", flow_id)
    return row


def require_valid(session: Session, defn: FlowDefinition) -> None:
    """Raises a 422 listing every problem of `defn` against what exists now."""
    problems = validate_definition(
        defn,
        known_metrics=set(session.scalars(select(Metric.name))),
        known_lists=set(session.scalars(select(ProfileList.id))),
        known_segments=live_segment_ids(session),
        draft_segments=set(session.scalars(select(Segment.id).where(Segment.status == "draft"))),
    )
    if problems:
        shown = "; ".join(f"{p['field']}: {p['reason']}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ApiError(
            422,
            "validation_error",
            f"the flow definition has {len(problems)} problem(s): {shown}{more}",
            problems,
        )


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


def _summary(flow: Flow) -> FlowSummary:
    return FlowSummary.model_validate({**flow.model_dump(), "version": flow.latest_version})


def _public(flow: Flow, version: FlowVersion) -> FlowPublic:
    return FlowPublic(**_summary(flow).model_dump(), definition=version.definition)


def _latest(session: Session, flow: Flow) -> FlowVersion:
    row = session.get(FlowVersion, (flow.id, flow.latest_version))
    if row is None:  # written in the same transaction as the flow: a broken database
        raise RuntimeError(f"flow {flow.id} has no version {flow.latest_version}")
    return row


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a flow (version 1)")
def create_flow(body: FlowCreate, engine: EngineDep) -> FlowPublic:
    defn = body.definition()
    with session_scope(engine) as session:
        require_valid(session, defn)
        flow = Flow(id=new_id("fl"), name=body.name, status=body.status, latest_version=1)
        _route_on(flow, defn)
        version = FlowVersion(flow_id=flow.id, version=1, definition=_stored(defn))
        session.add(flow)
        session.flush()  # the flow row first: the version references it
        session.add(version)
        return _public(flow, version)


@router.get("", summary="List flows, oldest first")
def list_flows(
    engine: EngineDep,
    status: FlowStatus | None = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[FlowSummary]:
    after = decode_cursor(cursor)
    stmt = select(Flow).where(Flow.deleted_at.is_(None))
    if status is not None:
        stmt = stmt.where(Flow.status == status)
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(session, stmt, Flow.id, limit, after)
    return Page[FlowSummary](data=[_summary(r) for r in page], next_cursor=next_cursor)


@router.get("/{flow_id}", summary="Get a flow with its current definition")
def get_flow(flow_id: str, engine: EngineDep) -> FlowPublic:
    with session_scope(engine) as session:
        flow = load_flow(session, flow_id)
        return _public(flow, _latest(session, flow))


@router.patch(
    "/{flow_id}",
    summary="Rename a flow or change its status (manual and live need a valid definition)",
)
def patch_flow(flow_id: str, body: FlowUpdate, engine: EngineDep) -> FlowPublic:
    with session_scope(engine) as session:
        flow = load_flow(session, flow_id, for_update=True)
        latest = _latest(session, flow)
        for name in body.model_fields_set:
            value = getattr(body, name)
            if value is None:
                raise invalid(name, "must not be null")
            setattr(flow, name, value)
        if "status" in body.model_fields_set and flow.status in _RUNNING_STATUSES:
            # Lists can be deleted after a flow was saved: re-check before anything runs.
            require_valid(session, FlowDefinition.model_validate(latest.definition))
        flow.updated_at = utcnow()
        session.add(flow)
        return _public(flow, latest)


@router.put(
    "/{flow_id}/definition",
    summary="Replace the definition: a new version when anything changed",
)
def replace_definition(flow_id: str, body: FlowDefinitionIn, engine: EngineDep) -> FlowPublic:
    defn = body.definition()
    with session_scope(engine) as session:
        # Locked so two concurrent edits get versions N+1 and N+2, not one conflict.
        flow = load_flow(session, flow_id, for_update=True)
        require_valid(session, defn)
        latest = _latest(session, flow)
        if _stored(FlowDefinition.model_validate(latest.definition)) == _stored(defn):
            return _public(flow, latest)
        version = FlowVersion(
            flow_id=flow.id, version=flow.latest_version + 1, definition=_stored(defn)
        )
        flow.latest_version = version.version
        _route_on(flow, defn)
        flow.updated_at = utcnow()
        session.add(flow)
        session.add(version)
        return _public(flow, version)


@router.get("/{flow_id}/versions", summary="A flow's versions, oldest first")
def list_versions(
    flow_id: str, engine: EngineDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[FlowVersionPublic]:
    after = decode_cursor(cursor)
    if after is not None and not after.isdecimal():
        raise invalid("cursor", "not a cursor returned by this API")
    stmt = select(FlowVersion).where(FlowVersion.flow_id == flow_id)
    with session_scope(engine) as session:
        load_flow(session, flow_id)
        page, next_cursor = keyset_page(
            session, stmt, FlowVersion.version, limit, None if after is None else int(after)
        )
    return Page[FlowVersionPublic](
        data=[FlowVersionPublic.model_validate(r.model_dump()) for r in page],
        next_cursor=next_cursor,
    )


@router.get("/{flow_id}/versions/{version}", summary="One version of a flow's definition")
def get_version(flow_id: str, version: int, engine: EngineDep) -> FlowVersionPublic:
    with session_scope(engine) as session:
        load_flow(session, flow_id)
        row = session.get(FlowVersion, (flow_id, version))
        if row is None:
            raise not_found("version", f"{flow_id} v{version}")
        return FlowVersionPublic.model_validate(row.model_dump())


def _soft_delete(engine, flow_id: str) -> list[str]:
    with session_scope(engine) as session:
        flow = load_flow(session, flow_id, for_update=True)
        flow.deleted_at = flow.updated_at = utcnow()
        session.add(flow)
        running = FlowEnrollment.__table__.c.flow_id == flow_id
        return cancel_enrollments(session, "flow_deleted", running)


@router.delete(
    "/{flow_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a flow: it never triggers again and its running enrollments are cancelled",
    description="The flow and its running enrollments are cancelled in the database at once "
    "(nothing more is sent); their workflows are then asked to cancel, after the response. If "
    "Temporal cannot be reached the call still succeeds: the worker's periodic reconcile cancels "
    "the workflows (terminating any that do not stop within five minutes).",
)
def delete_flow(
    flow_id: str, request: Request, engine: EngineDep, background: BackgroundTasks
) -> Response:
    cancelled = _soft_delete(engine, flow_id)
    # After the response: a flow may have thousands of running enrollments, and the cancelled
    # rows already stop every send (see herald/flows/cancellation.py).
    background.add_task(stop_enrollments, request.app.state.temporal, cancelled, "flow_deleted")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
