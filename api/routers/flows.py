"""Flows: create, read, rename or change status, replace the definition (versioned), delete;
test sends and previews of their message steps.

The rules live in herald/flows/store.py; this router reads requests and pages.
"""

from functools import partial

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response, status
from sqlalchemy import select

from api.deps import EngineDep, SettingsDep, require_private_key
from api.errors import invalid, not_found
from api.pagination import CursorQuery, LimitQuery, Page, decode_cursor, keyset_page
from api.temporal_link import stop_enrollments
from herald.core.db import session_scope
from herald.delivery import previews, test_sends
from herald.delivery.message_trials import flow_message
from herald.flows import store
from models.flow_dto import (
    FlowCreate,
    FlowDefinitionIn,
    FlowPublic,
    FlowStatus,
    FlowSummary,
    FlowUpdate,
    FlowVersionPublic,
)
from models.flows import Flow, FlowVersion
from models.preview_dto import FlowPreviewIn, FlowTestSendIn, MessagePreview, TestSendPublic
from models.types import utcnow

router = APIRouter(prefix="/v1/flows", tags=["flows"], dependencies=[Depends(require_private_key)])


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a flow (version 1)")
def create_flow(body: FlowCreate, engine: EngineDep) -> FlowPublic:
    with session_scope(engine) as session:
        return store.create_flow(session, body)


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
    return Page[FlowSummary](data=[store.summary(r) for r in page], next_cursor=next_cursor)


@router.get("/{flow_id}", summary="Get a flow with its current definition")
def get_flow(flow_id: str, engine: EngineDep) -> FlowPublic:
    with session_scope(engine) as session:
        flow = store.load_flow(session, flow_id)
        return store.public(flow, store.latest(session, flow))


@router.patch(
    "/{flow_id}",
    summary="Rename a flow or change its status (manual and live need a valid definition)",
)
def patch_flow(flow_id: str, body: FlowUpdate, engine: EngineDep) -> FlowPublic:
    with session_scope(engine) as session:
        return store.update_flow(session, flow_id, body)


@router.put(
    "/{flow_id}/definition",
    summary="Replace the definition: a new version when anything changed",
)
def replace_definition(flow_id: str, body: FlowDefinitionIn, engine: EngineDep) -> FlowPublic:
    with session_scope(engine) as session:
        return store.replace_definition(session, flow_id, body.definition())


@router.get("/{flow_id}/versions", summary="A flow's versions, oldest first")
def list_versions(
    flow_id: str, engine: EngineDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[FlowVersionPublic]:
    after = decode_cursor(cursor)
    if after is not None and not after.isdecimal():
        raise invalid("cursor", "not a cursor returned by this API")
    stmt = select(FlowVersion).where(FlowVersion.flow_id == flow_id)
    with session_scope(engine) as session:
        store.load_flow(session, flow_id)
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
        store.load_flow(session, flow_id)
        row = session.get(FlowVersion, (flow_id, version))
        if row is None:
            raise not_found("version", f"{flow_id} v{version}")
        return FlowVersionPublic.model_validate(row.model_dump())


@router.post(
    "/{flow_id}/messages/{step_id}/test-send",
    summary="Send a message step of the current version now, marked test, counted nowhere",
    description="As for campaign messages (`profile_id` and/or `to`), plus an optional sample "
    "trigger `event` ({properties, value}) for the templates. 404 for an unknown flow or step, "
    "422 for a step that is not a message.",
)
async def test_send_step(
    flow_id: str, step_id: str, body: FlowTestSendIn, engine: EngineDep, settings: SettingsDep
) -> TestSendPublic:
    load = partial(flow_message, flow_id=flow_id, step_id=step_id, event=body.event, now=utcnow())
    return await test_sends.send_test(engine, settings, load, body)


@router.post(
    "/{flow_id}/messages/{step_id}/preview",
    summary="Render a message step for a profile and a sample trigger event",
    description="Subject, HTML, text, SMS segments and the warnings that apply (SMS segments, a "
    "marketing email without an unsubscribe link). A template that does not render is a 422 "
    "naming the field, with the line and column of the problem.",
)
def preview_step(
    flow_id: str,
    step_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    body: FlowPreviewIn = FlowPreviewIn(),  # no body: preview for nobody
) -> MessagePreview:
    now = utcnow()
    load = partial(flow_message, flow_id=flow_id, step_id=step_id, event=body.event, now=now)
    with session_scope(engine) as session:
        return previews.preview(session, settings, load, body, now)


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
    with session_scope(engine) as session:
        cancelled = store.delete_flow(session, flow_id)
    # After the response: a flow may have thousands of running enrollments, and the cancelled
    # rows already stop every send (see herald/flows/cancellation.py).
    background.add_task(stop_enrollments, request.app.state.temporal, cancelled, "flow_deleted")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
