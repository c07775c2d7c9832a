"""Omnichannel campaigns: drafts (settings, paths, messages), review, schedule, cancel, report.

The rules live in herald/campaigns/store.py (limits, locks, audiences, snapshot) and
herald/campaigns/review.py (errors and warnings); this router maps requests onto them and their
errors onto HTTP. Scheduling writes the database first and then starts the campaign's workflow;
when Temporal cannot take it, the campaign goes back to draft and the answer is a 503, so
scheduling never half-happens. Unscheduling stops the workflow before reverting to draft, for
the same reason; cancelling is recorded first (a cancelled campaign sends nothing more) and
the workflow is cancelled after, best effort: when Temporal cannot be reached the call still
succeeds (header `Herald-Temporal: pending_reconcile`) and the worker's periodic reconcile
cancels the workflow (see herald/flows/cancellation.py).
"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

import structlog
from fastapi import APIRouter, Depends, Request, Response, status
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import EngineDep, SettingsDep, require_private_key
from api.errors import ApiError, invalid, not_found
from api.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    decode_time_cursor,
    encode_time_cursor,
    keyset_page,
)
from api.temporal_link import TEMPORAL_HEADER, TemporalLink
from herald.campaigns import store
from herald.campaigns.contract import CAMPAIGN_WORKFLOW, CampaignSnapshot, campaign_workflow_id
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.search_attributes import attributes
from models.campaign_dto import (
    CampaignCreate,
    CampaignPublic,
    CampaignReport,
    CampaignReview,
    CampaignStatus,
    CampaignSummary,
    CampaignUpdate,
    ExitPublic,
    MessageClone,
    MessageCreate,
    MessagePublic,
    MessageUpdate,
    PathCreate,
    PathPublic,
    PathReorder,
    PathUpdate,
)
from models.campaigns import Campaign
from models.types import utcnow

router = APIRouter(
    prefix="/v1/campaigns", tags=["campaigns"], dependencies=[Depends(require_private_key)]
)
log = structlog.get_logger("herald.api")

# How long the API waits for Temporal on an operator's behalf.
TEMPORAL_TIMEOUT_SECONDS = 5.0


@contextmanager
def _session(engine: Engine) -> Iterator[Session]:
    """A transaction whose domain errors become HTTP errors."""
    try:
        with session_scope(engine) as session:
            yield session
    except store.CampaignNotFound as exc:
        raise not_found(exc.what, exc.ident) from None
    except store.InvalidCampaign as exc:
        raise invalid(exc.field, exc.reason) from None
    except store.CampaignLocked as exc:
        raise ApiError(423, "locked", str(exc)) from None
    except store.CampaignConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None


def _draft(session: Session, campaign_id: str) -> Campaign:
    """The campaign, locked for the change about to happen."""
    return store.load_campaign(session, campaign_id, for_update=True)


# ---- campaigns ----------------------------------------------------------------------------------


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a draft campaign")
def create_campaign(body: CampaignCreate, engine: EngineDep) -> CampaignPublic:
    with _session(engine) as session:
        return store.public(session, store.create_campaign(session, body))


@router.get("", summary="List campaigns, oldest first")
def list_campaigns(
    engine: EngineDep,
    status: CampaignStatus | None = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[CampaignSummary]:
    after = decode_cursor(cursor)
    stmt = select(Campaign)
    if status is not None:
        stmt = stmt.where(Campaign.status == status)
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(session, stmt, Campaign.id, limit, after)
    return Page[CampaignSummary](
        data=[CampaignSummary.model_validate(r.model_dump()) for r in page],
        next_cursor=next_cursor,
    )


@router.get("/{campaign_id}", summary="A campaign with its paths and their messages")
def get_campaign(campaign_id: str, engine: EngineDep) -> CampaignPublic:
    with _session(engine) as session:
        return store.public(session, store.load_campaign(session, campaign_id))


@router.patch(
    "/{campaign_id}",
    summary="Change details (any time) or send settings and exit criteria (draft only)",
    description="Send settings (timezone, local_time, past_time_policy) and exit_metric are "
    "locked while the campaign is scheduled (423: unschedule first) and for good once a "
    "message was sent (409).",
)
def patch_campaign(campaign_id: str, body: CampaignUpdate, engine: EngineDep) -> CampaignPublic:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        store.update_campaign(session, campaign, body)
        return store.public(session, campaign)


@router.delete(
    "/{campaign_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a draft or cancelled campaign",
)
def delete_campaign(campaign_id: str, engine: EngineDep) -> Response:
    with _session(engine) as session:
        store.delete_campaign(session, _draft(session, campaign_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---- paths --------------------------------------------------------------------------------------


@router.post(
    "/{campaign_id}/paths",
    status_code=status.HTTP_201_CREATED,
    summary="Add a path (at most 10): an audience of lists included minus lists excluded",
)
def add_path(campaign_id: str, body: PathCreate, engine: EngineDep) -> PathPublic:
    with _session(engine) as session:
        path = store.add_path(session, _draft(session, campaign_id), body)
        return store.path_public(session, path)


@router.post(
    "/{campaign_id}/paths/reorder",
    summary="Put the paths in a new order (a profile in several audiences gets the first)",
)
def reorder_paths(campaign_id: str, body: PathReorder, engine: EngineDep) -> CampaignPublic:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        store.reorder_paths(session, campaign, body.path_ids)
        return store.public(session, campaign)


@router.patch("/{campaign_id}/paths/{path_id}", summary="Rename a path or change its audience")
def patch_path(campaign_id: str, path_id: str, body: PathUpdate, engine: EngineDep) -> PathPublic:
    with _session(engine) as session:
        path = store.update_path(session, _draft(session, campaign_id), path_id, body)
        return store.path_public(session, path)


@router.delete(
    "/{campaign_id}/paths/{path_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a path and its messages",
)
def delete_path(campaign_id: str, path_id: str, engine: EngineDep) -> Response:
    with _session(engine) as session:
        store.delete_path(session, _draft(session, campaign_id), path_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{campaign_id}/paths/{path_id}/clone",
    status_code=status.HTTP_201_CREATED,
    summary="Copy a path with its messages, right after it",
)
def clone_path(campaign_id: str, path_id: str, engine: EngineDep) -> PathPublic:
    with _session(engine) as session:
        path = store.clone_path(session, _draft(session, campaign_id), path_id)
        return store.path_public(session, path)


# ---- messages -----------------------------------------------------------------------------------


@router.post(
    "/{campaign_id}/paths/{path_id}/messages",
    status_code=status.HTTP_201_CREATED,
    summary="Add a message (at most 30 per campaign)",
)
def add_message(
    campaign_id: str, path_id: str, body: MessageCreate, engine: EngineDep
) -> MessagePublic:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        message = store.add_message(session, campaign, path_id, body, utcnow())
        return store.message_public(message)


@router.patch(
    "/{campaign_id}/paths/{path_id}/messages/{message_id}",
    summary="Change a message (content fields not sent keep their value)",
)
def patch_message(
    campaign_id: str, path_id: str, message_id: str, body: MessageUpdate, engine: EngineDep
) -> MessagePublic:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        message = store.update_message(session, campaign, path_id, message_id, body, utcnow())
        return store.message_public(message)


@router.delete(
    "/{campaign_id}/paths/{path_id}/messages/{message_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a message (for good)",
)
def delete_message(campaign_id: str, path_id: str, message_id: str, engine: EngineDep) -> Response:
    with _session(engine) as session:
        store.delete_message(session, _draft(session, campaign_id), path_id, message_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{campaign_id}/paths/{path_id}/messages/{message_id}/clone",
    status_code=status.HTTP_201_CREATED,
    summary="Copy a message into a path of the same campaign (default: its own)",
)
def clone_message(
    campaign_id: str, path_id: str, message_id: str, body: MessageClone, engine: EngineDep
) -> MessagePublic:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        copy = store.clone_message(session, campaign, path_id, message_id, body.path_id)
        return store.message_public(copy)


# ---- review and lifecycle -----------------------------------------------------------------------


@router.get(
    "/{campaign_id}/review",
    summary="Errors (block scheduling) and warnings, per message and for the whole campaign",
)
def review_campaign(campaign_id: str, engine: EngineDep, settings: SettingsDep) -> CampaignReview:
    with _session(engine) as session:
        campaign = store.load_campaign(session, campaign_id)
        return store.review(
            session, campaign, default_email_sender=settings.smtp_sender, now=utcnow()
        )


def _not_ready(review: CampaignReview) -> ApiError:
    errors = [
        {"field": p.field or "campaign", "reason": p.message, "code": p.code}
        for p in review.campaign.errors
    ]
    for message in review.messages:
        errors.extend(
            {
                "field": f"messages[{message.message_id}].{p.field}"
                if p.field
                else f"messages[{message.message_id}]",
                "reason": p.message,
                "code": p.code,
            }
            for p in message.errors
        )
    shown = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return ApiError(
        422,
        "not_ready",
        f"the campaign has {len(errors)} error(s) and cannot be scheduled: {shown}{more}",
        errors,
    )


def _mark_scheduled(engine: Engine, settings: Settings, campaign_id: str) -> CampaignSnapshot:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        if campaign.status != "draft":
            raise ApiError(
                409,
                "conflict",
                f"campaign {campaign_id!r} is {campaign.status}: only a draft can be scheduled",
            )
        now = utcnow()
        review = store.review(session, campaign, default_email_sender=settings.smtp_sender, now=now)
        if not review.ready:
            raise _not_ready(review)
        store.mark_scheduled(session, campaign, now)
        return store.snapshot(session, campaign_id, settings.search_attributes)


def _undo_schedule(engine: Engine, campaign_id: str) -> None:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        if campaign.status == "scheduled" and not store.anything_sent(session, campaign):
            store.revert_to_draft(session, campaign)


async def _client(link: TemporalLink) -> Client:
    return await asyncio.wait_for(link.client(), TEMPORAL_TIMEOUT_SECONDS)


async def _start_workflow(link: TemporalLink, settings: Settings, snap: CampaignSnapshot) -> None:
    client = await _client(link)
    workflow_id = campaign_workflow_id(snap.settings.campaign_id)
    try:
        await client.start_workflow(
            CAMPAIGN_WORKFLOW,
            snap,
            id=workflow_id,
            task_queue=settings.task_queue,
            search_attributes=attributes(kind="campaign", campaign_id=snap.settings.campaign_id)
            if settings.search_attributes
            else None,
            rpc_timeout=timedelta(seconds=TEMPORAL_TIMEOUT_SECONDS),
        )
    except WorkflowAlreadyStartedError:
        raise
    except Exception:
        # A timeout does not say the start failed: make sure no workflow runs a campaign that
        # is about to go back to draft.
        with suppress(Exception):
            await asyncio.wait_for(
                client.get_workflow_handle(workflow_id).terminate(reason="scheduling failed"),
                TEMPORAL_TIMEOUT_SECONDS,
            )
        raise


@router.post(
    "/{campaign_id}/schedule",
    summary="Schedule a draft: refused with the review's errors; 503 if Temporal is down",
)
async def schedule_campaign(
    campaign_id: str, request: Request, engine: EngineDep, settings: SettingsDep
) -> CampaignPublic:
    snap = await run_in_threadpool(_mark_scheduled, engine, settings, campaign_id)
    try:
        await _start_workflow(request.app.state.temporal, settings, snap)
    except WorkflowAlreadyStartedError:
        await run_in_threadpool(_undo_schedule, engine, campaign_id)
        raise ApiError(
            409,
            "conflict",
            f"workflow {campaign_workflow_id(campaign_id)!r} from an earlier scheduling is "
            "still running (it is stopping after an unschedule); the campaign stays a draft, "
            "try again shortly",
        ) from None
    except Exception as exc:
        log.warning(
            "campaign not scheduled: Temporal failed", campaign=campaign_id, error=repr(exc)
        )
        await run_in_threadpool(_undo_schedule, engine, campaign_id)
        raise ApiError(
            503,
            "temporal_unavailable",
            "the campaign was not scheduled: Temporal could not be reached to start its "
            "workflow; it is still a draft, try again when Temporal is up",
        ) from None
    return await run_in_threadpool(_read, engine, campaign_id)


def _read(engine: Engine, campaign_id: str) -> CampaignPublic:
    with _session(engine) as session:
        return store.public(session, store.load_campaign(session, campaign_id))


def _require_revertible(engine: Engine, campaign_id: str) -> None:
    with _session(engine) as session:
        campaign = store.load_campaign(session, campaign_id)
        if campaign.status not in store.ACTIVE_STATUSES:
            raise ApiError(
                409,
                "conflict",
                f"campaign {campaign_id!r} is {campaign.status}: only a scheduled campaign can "
                "be unscheduled",
            )
        if store.anything_sent(session, campaign):
            raise ApiError(
                409,
                "conflict",
                f"campaign {campaign_id!r} has already sent messages: it cannot go back to "
                "draft (cancel it instead)",
            )


def _revert(engine: Engine, campaign_id: str) -> CampaignPublic:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        if campaign.status in store.ACTIVE_STATUSES:
            if store.anything_sent(session, campaign):
                # Sent between the check and the workflow's cancellation: it is stopped now,
                # so the campaign ends here rather than pretending to be a draft.
                store.cancel(session, campaign, "operator", utcnow())
            else:
                store.revert_to_draft(session, campaign)
        return store.public(session, campaign)


async def _cancel_workflow(link: TemporalLink, campaign_id: str) -> None:
    """Requests cancellation; a workflow that does not exist (any more) is fine."""
    client = await _client(link)
    handle = client.get_workflow_handle(campaign_workflow_id(campaign_id))
    try:
        await asyncio.wait_for(handle.cancel(), TEMPORAL_TIMEOUT_SECONDS)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


@router.post(
    "/{campaign_id}/unschedule",
    summary="Revert a scheduled campaign to draft (only while nothing was sent)",
)
async def unschedule_campaign(
    campaign_id: str, request: Request, engine: EngineDep
) -> CampaignPublic:
    await run_in_threadpool(_require_revertible, engine, campaign_id)
    try:
        await _cancel_workflow(request.app.state.temporal, campaign_id)
    except Exception as exc:
        log.warning(
            "campaign not unscheduled: Temporal failed", campaign=campaign_id, error=repr(exc)
        )
        raise ApiError(
            503,
            "temporal_unavailable",
            "the campaign was not unscheduled: Temporal could not be reached to stop its "
            "workflow; it is still scheduled, try again when Temporal is up",
        ) from None
    public = await run_in_threadpool(_revert, engine, campaign_id)
    if public.status == "cancelled":
        raise ApiError(
            409,
            "conflict",
            f"campaign {campaign_id!r} started sending while it was being unscheduled: its "
            "workflow was stopped and the campaign is now cancelled",
        )
    return public


def _cancel(engine: Engine, campaign_id: str) -> CampaignPublic:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        if campaign.status not in store.ACTIVE_STATUSES:
            raise ApiError(
                409,
                "conflict",
                f"campaign {campaign_id!r} is {campaign.status}: only a scheduled or sending "
                "campaign can be cancelled",
            )
        store.cancel(session, campaign, "operator", utcnow())
        return store.public(session, campaign)


@router.post(
    "/{campaign_id}/cancel",
    summary="Cancel a scheduled or sending campaign: nothing more is sent (reason `operator`)",
    description="The campaign is cancelled in the database at once (nothing more is sent), then "
    "its workflow is asked to cancel. Header `Herald-Temporal`: `cancel_requested`, or "
    "`pending_reconcile` when Temporal could not be reached; the worker's periodic reconcile "
    "then cancels the workflow (terminating it if it does not stop within five minutes).",
)
async def cancel_campaign(
    campaign_id: str, request: Request, response: Response, engine: EngineDep
) -> CampaignPublic:
    public = await run_in_threadpool(_cancel, engine, campaign_id)
    # The cancelled row already stops every send: Temporal is told best effort.
    link: TemporalLink = request.app.state.temporal
    response.headers[TEMPORAL_HEADER] = await link.stop_workflows(
        [(campaign_workflow_id(campaign_id), None)], TEMPORAL_TIMEOUT_SECONDS
    )
    return public


# ---- report -------------------------------------------------------------------------------------


@router.get(
    "/{campaign_id}/report",
    summary="Per message and per path: audience, sent, skipped by reason, failed",
)
def campaign_report(campaign_id: str, engine: EngineDep) -> CampaignReport:
    with _session(engine) as session:
        return store.report(session, store.load_campaign(session, campaign_id))


@router.get(
    "/{campaign_id}/exits",
    summary="Profiles excluded after converting (exit criteria), in conversion order",
)
def list_exits(
    campaign_id: str, engine: EngineDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[ExitPublic]:
    after = decode_time_cursor(cursor)
    with _session(engine) as session:
        store.load_campaign(session, campaign_id)
        rows = store.exits_page(session, campaign_id, after, limit + 1)
    page = rows[:limit]
    return Page[ExitPublic](
        data=[ExitPublic.model_validate(r.model_dump()) for r in page],
        next_cursor=(
            encode_time_cursor(page[-1].converted_at, page[-1].profile_id)
            if len(rows) > limit
            else None
        ),
    )
