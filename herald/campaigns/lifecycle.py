"""A campaign's lifecycle: schedule, unschedule, cancel, in the database and in Temporal.

Scheduling writes the database first and then starts the campaign's workflow; when Temporal
cannot take it, the campaign goes back to draft (Unavailable), so scheduling never half-happens.
Unscheduling stops the workflow before reverting to draft, for the same reason. Cancelling is
recorded first (a cancelled campaign sends nothing more) and the workflow is cancelled after,
best effort: when Temporal cannot be reached the cancel still stands and the worker's periodic
reconcile cancels the workflow (herald/flows/cancellation.py).
"""

import asyncio
from contextlib import suppress
from datetime import timedelta

import structlog
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from herald.campaigns import review_facts, snapshot, store, transitions
from herald.campaigns.contract import CAMPAIGN_WORKFLOW, CampaignSnapshot, campaign_workflow_id
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.errors import Conflict, NotReady, Unavailable
from herald.core.search_attributes import attributes
from herald.core.temporal import TemporalAccess
from models.campaign_dto import CampaignPublic, CampaignReview
from models.enums import CampaignStatus
from models.types import utcnow

log = structlog.get_logger("herald.campaigns")

# How long an operator's call waits for Temporal.
TEMPORAL_TIMEOUT_SECONDS = 5.0


def not_ready(review: CampaignReview) -> NotReady:
    """The review's errors, each with its field, as the refusal to schedule."""
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
    return NotReady(
        f"the campaign has {len(errors)} error(s) and cannot be scheduled: {shown}{more}", errors
    )


def public(engine: Engine, campaign_id: str) -> CampaignPublic:
    with session_scope(engine) as session:
        return store.public(session, store.load_campaign(session, campaign_id))


# ---- schedule -----------------------------------------------------------------------------------


def _mark_scheduled(engine: Engine, settings: Settings, campaign_id: str) -> CampaignSnapshot:
    with session_scope(engine) as session:
        campaign = store.load_campaign(session, campaign_id, for_update=True)
        if campaign.status != CampaignStatus.draft:
            raise Conflict(
                f"campaign {campaign_id!r} is {campaign.status}: only a draft can be scheduled"
            )
        now = utcnow()
        review = review_facts.review(
            session, campaign, default_email_sender=settings.smtp_sender, now=now
        )
        if not review.ready:
            raise not_ready(review)
        transitions.mark_scheduled(session, campaign, now)
        return snapshot.snapshot(session, campaign_id, settings.search_attributes)


def _undo_schedule(engine: Engine, campaign_id: str) -> None:
    with session_scope(engine) as session:
        campaign = store.load_campaign(session, campaign_id, for_update=True)
        if campaign.status == CampaignStatus.scheduled and not transitions.anything_sent(
            session, campaign
        ):
            transitions.revert_to_draft(session, campaign)


async def _client(temporal: TemporalAccess) -> Client:
    return await asyncio.wait_for(temporal.client(), TEMPORAL_TIMEOUT_SECONDS)


async def _start_workflow(
    temporal: TemporalAccess, settings: Settings, snap: CampaignSnapshot
) -> None:
    client = await _client(temporal)
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


async def schedule(
    engine: Engine, temporal: TemporalAccess, settings: Settings, campaign_id: str
) -> CampaignPublic:
    """Schedules a draft: NotReady with the review's errors; Unavailable if Temporal is down."""
    snap = await asyncio.to_thread(_mark_scheduled, engine, settings, campaign_id)
    try:
        await _start_workflow(temporal, settings, snap)
    except WorkflowAlreadyStartedError:
        await asyncio.to_thread(_undo_schedule, engine, campaign_id)
        raise Conflict(
            f"workflow {campaign_workflow_id(campaign_id)!r} from an earlier scheduling is "
            "still running (it is stopping after an unschedule); the campaign stays a draft, "
            "try again shortly"
        ) from None
    except Exception as exc:
        log.warning(
            "campaign not scheduled: Temporal failed", campaign=campaign_id, error=repr(exc)
        )
        await asyncio.to_thread(_undo_schedule, engine, campaign_id)
        raise Unavailable(
            "the campaign was not scheduled: Temporal could not be reached to start its "
            "workflow; it is still a draft, try again when Temporal is up"
        ) from None
    return await asyncio.to_thread(public, engine, campaign_id)


# ---- unschedule ---------------------------------------------------------------------------------


def _require_revertible(engine: Engine, campaign_id: str) -> None:
    with session_scope(engine) as session:
        campaign = store.load_campaign(session, campaign_id)
        if campaign.status not in store.ACTIVE_STATUSES:
            raise Conflict(
                f"campaign {campaign_id!r} is {campaign.status}: only a scheduled campaign can "
                "be unscheduled"
            )
        if transitions.anything_sent(session, campaign):
            raise Conflict(
                f"campaign {campaign_id!r} has already sent messages: it cannot go back to "
                "draft (cancel it instead)"
            )


def _revert(engine: Engine, campaign_id: str) -> CampaignPublic:
    with session_scope(engine) as session:
        campaign = store.load_campaign(session, campaign_id, for_update=True)
        if campaign.status in store.ACTIVE_STATUSES:
            if transitions.anything_sent(session, campaign):
                # Sent between the check and the workflow's cancellation: it is stopped now,
                # so the campaign ends here rather than pretending to be a draft.
                transitions.cancel(session, campaign, "operator", utcnow())
            else:
                transitions.revert_to_draft(session, campaign)
        return store.public(session, campaign)


async def _cancel_workflow(temporal: TemporalAccess, campaign_id: str) -> None:
    """Requests cancellation; a workflow that does not exist (any more) is fine."""
    client = await _client(temporal)
    handle = client.get_workflow_handle(campaign_workflow_id(campaign_id))
    try:
        await asyncio.wait_for(handle.cancel(), TEMPORAL_TIMEOUT_SECONDS)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


async def unschedule(engine: Engine, temporal: TemporalAccess, campaign_id: str) -> CampaignPublic:
    """Back to draft, only while nothing was sent; Unavailable if Temporal is down."""
    await asyncio.to_thread(_require_revertible, engine, campaign_id)
    try:
        await _cancel_workflow(temporal, campaign_id)
    except Exception as exc:
        log.warning(
            "campaign not unscheduled: Temporal failed", campaign=campaign_id, error=repr(exc)
        )
        raise Unavailable(
            "the campaign was not unscheduled: Temporal could not be reached to stop its "
            "workflow; it is still scheduled, try again when Temporal is up"
        ) from None
    reverted = await asyncio.to_thread(_revert, engine, campaign_id)
    if reverted.status == CampaignStatus.cancelled:
        raise Conflict(
            f"campaign {campaign_id!r} started sending while it was being unscheduled: its "
            "workflow was stopped and the campaign is now cancelled"
        )
    return reverted


# ---- cancel -------------------------------------------------------------------------------------


def _cancel(engine: Engine, campaign_id: str) -> CampaignPublic:
    with session_scope(engine) as session:
        campaign = store.load_campaign(session, campaign_id, for_update=True)
        if campaign.status not in store.ACTIVE_STATUSES:
            raise Conflict(
                f"campaign {campaign_id!r} is {campaign.status}: only a scheduled or sending "
                "campaign can be cancelled"
            )
        transitions.cancel(session, campaign, "operator", utcnow())
        return store.public(session, campaign)


async def cancel(
    engine: Engine, temporal: TemporalAccess, campaign_id: str
) -> tuple[CampaignPublic, str]:
    """Cancels a scheduled or sending campaign (reason `operator`); returns it and whether
    Temporal was told now (`cancel_requested`) or the reconcile will (`pending_reconcile`)."""
    cancelled = await asyncio.to_thread(_cancel, engine, campaign_id)
    # The cancelled row already stops every send: Temporal is told best effort.
    told = await temporal.stop_workflows(
        [(campaign_workflow_id(campaign_id), None)], TEMPORAL_TIMEOUT_SECONDS
    )
    return cancelled, told
