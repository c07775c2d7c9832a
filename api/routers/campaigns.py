"""Omnichannel campaigns: drafts (settings, paths, messages), review, schedule, cancel, report.

The rules live in herald/campaigns/: store.py (rows, limits, locks), editing.py (paths and
messages), review.py with review_facts.py (errors and warnings), lifecycle.py (schedule,
unschedule, cancel, in the database and in Temporal) and report.py. This router maps requests
onto them; their errors become HTTP in api/errors.py.
"""

from functools import partial

from fastapi import APIRouter, Depends, Request, Response, status
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.deps import EngineDep, SettingsDep, require_private_key
from api.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    decode_time_cursor,
    encode_time_cursor,
    keyset_page,
)
from api.temporal_link import TEMPORAL_HEADER
from herald.campaigns import editing, lifecycle, report, review_facts, store
from herald.core.db import session_scope
from herald.delivery import previews, test_sends
from herald.delivery.message_trials import campaign_message
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
from models.preview_dto import MessagePreview, PreviewIn, TestSendIn, TestSendPublic
from models.types import utcnow

router = APIRouter(
    prefix="/v1/campaigns", tags=["campaigns"], dependencies=[Depends(require_private_key)]
)


def _session(engine: Engine):
    """A transaction; domain errors become HTTP errors in api/errors.py."""
    return session_scope(engine)


def _draft(session: Session, campaign_id: str) -> Campaign:
    """The campaign, locked for the change about to happen."""
    return store.load_campaign(session, campaign_id, for_update=True)


# ---- campaigns ----------------------------------------------------------------------------------


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a draft campaign")
def create_campaign(body: CampaignCreate, engine: EngineDep) -> CampaignPublic:
    with _session(engine) as session:
        return store.public(session, editing.create_campaign(session, body))


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
        editing.update_campaign(session, campaign, body)
        return store.public(session, campaign)


@router.delete(
    "/{campaign_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a draft or cancelled campaign",
)
def delete_campaign(campaign_id: str, engine: EngineDep) -> Response:
    with _session(engine) as session:
        editing.delete_campaign(session, _draft(session, campaign_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---- paths --------------------------------------------------------------------------------------


@router.post(
    "/{campaign_id}/paths",
    status_code=status.HTTP_201_CREATED,
    summary="Add a path (at most 10): an audience of lists included minus lists excluded",
)
def add_path(campaign_id: str, body: PathCreate, engine: EngineDep) -> PathPublic:
    with _session(engine) as session:
        path = editing.add_path(session, _draft(session, campaign_id), body)
        return store.path_public(session, path)


@router.post(
    "/{campaign_id}/paths/reorder",
    summary="Put the paths in a new order (a profile in several audiences gets the first)",
)
def reorder_paths(campaign_id: str, body: PathReorder, engine: EngineDep) -> CampaignPublic:
    with _session(engine) as session:
        campaign = _draft(session, campaign_id)
        editing.reorder_paths(session, campaign, body.path_ids)
        return store.public(session, campaign)


@router.patch("/{campaign_id}/paths/{path_id}", summary="Rename a path or change its audience")
def patch_path(campaign_id: str, path_id: str, body: PathUpdate, engine: EngineDep) -> PathPublic:
    with _session(engine) as session:
        path = editing.update_path(session, _draft(session, campaign_id), path_id, body)
        return store.path_public(session, path)


@router.delete(
    "/{campaign_id}/paths/{path_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a path and its messages",
)
def delete_path(campaign_id: str, path_id: str, engine: EngineDep) -> Response:
    with _session(engine) as session:
        editing.delete_path(session, _draft(session, campaign_id), path_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{campaign_id}/paths/{path_id}/clone",
    status_code=status.HTTP_201_CREATED,
    summary="Copy a path with its messages, right after it",
)
def clone_path(campaign_id: str, path_id: str, engine: EngineDep) -> PathPublic:
    with _session(engine) as session:
        path = editing.clone_path(session, _draft(session, campaign_id), path_id)
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
        message = editing.add_message(session, campaign, path_id, body, utcnow())
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
        message = editing.update_message(session, campaign, path_id, message_id, body, utcnow())
        return store.message_public(message)


@router.delete(
    "/{campaign_id}/paths/{path_id}/messages/{message_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a message (for good)",
)
def delete_message(campaign_id: str, path_id: str, message_id: str, engine: EngineDep) -> Response:
    with _session(engine) as session:
        editing.delete_message(session, _draft(session, campaign_id), path_id, message_id)
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
        copy = editing.clone_message(session, campaign, path_id, message_id, body.path_id)
        return store.message_public(copy)


@router.post(
    "/{campaign_id}/messages/{message_id}/test-send",
    summary="Send the message now to a profile or a raw address, marked test, counted nowhere",
    description="`profile_id`: render for that profile (and, without `to`, send to its address "
    "for the channel); `to`: send there (rendered for `profile_id`, or an empty profile). Goes "
    "through the channel's configured provider, skipping consent and sending policies. The "
    "answer is the delivery row (`test: true`): `sent`, or `failed` with the provider's reason. "
    "503 when the provider could not take it now, 502 when it refused Herald's credentials.",
)
async def test_send_message(
    campaign_id: str,
    message_id: str,
    body: TestSendIn,
    engine: EngineDep,
    settings: SettingsDep,
) -> TestSendPublic:
    load = partial(campaign_message, campaign_id=campaign_id, message_id=message_id)
    return await test_sends.send_test(engine, settings, load, body)


@router.post(
    "/{campaign_id}/messages/{message_id}/preview",
    summary="Render the message for a profile: subject, HTML, text, SMS segments, warnings",
    description="A template that does not render is a 422 naming the field, with the line and "
    "column of the problem.",
)
def preview_message(
    campaign_id: str,
    message_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    body: PreviewIn = PreviewIn(),  # no body: preview for nobody
) -> MessagePreview:
    load = partial(campaign_message, campaign_id=campaign_id, message_id=message_id)
    with _session(engine) as session:
        return previews.preview(session, settings, load, body, utcnow())


# ---- review and lifecycle -----------------------------------------------------------------------


@router.get(
    "/{campaign_id}/review",
    summary="Errors (block scheduling) and warnings, per message and for the whole campaign",
)
def review_campaign(campaign_id: str, engine: EngineDep, settings: SettingsDep) -> CampaignReview:
    with _session(engine) as session:
        campaign = store.load_campaign(session, campaign_id)
        return review_facts.review(
            session, campaign, default_email_sender=settings.smtp_sender, now=utcnow()
        )


@router.post(
    "/{campaign_id}/schedule",
    summary="Schedule a draft: refused with the review's errors; 503 if Temporal is down",
)
async def schedule_campaign(
    campaign_id: str, request: Request, engine: EngineDep, settings: SettingsDep
) -> CampaignPublic:
    return await lifecycle.schedule(engine, request.app.state.temporal, settings, campaign_id)


@router.post(
    "/{campaign_id}/unschedule",
    summary="Revert a scheduled campaign to draft (only while nothing was sent)",
)
async def unschedule_campaign(
    campaign_id: str, request: Request, engine: EngineDep
) -> CampaignPublic:
    return await lifecycle.unschedule(engine, request.app.state.temporal, campaign_id)


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
    cancelled, told = await lifecycle.cancel(engine, request.app.state.temporal, campaign_id)
    response.headers[TEMPORAL_HEADER] = told
    return cancelled


# ---- report -------------------------------------------------------------------------------------


@router.get(
    "/{campaign_id}/report",
    summary="Per message and per path: audience, sent, skipped by reason, failed",
)
def campaign_report(campaign_id: str, engine: EngineDep) -> CampaignReport:
    with _session(engine) as session:
        return report.report(session, store.load_campaign(session, campaign_id))


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
        rows = report.exits_page(session, campaign_id, after, limit + 1)
    page = rows[:limit]
    return Page[ExitPublic](
        data=[ExitPublic.model_validate(r.model_dump()) for r in page],
        next_cursor=(
            encode_time_cursor(page[-1].converted_at, page[-1].profile_id)
            if len(rows) > limit
            else None
        ),
    )
