"""CampaignWorkflow and CampaignPathWorkflow: a scheduled campaign, one durable run per path.

The campaign workflow checks that the audience is not empty, starts one child per path and
closes the campaign when they are done. A path workflow sleeps until each message's waves
(fixed, staggered per hour, or per recipient timezone), then sends each wave page by page through
the `send_page` activity. Recipients never enter history: pages return counts and a cursor, and
the workflow continues-as-new every few hundred pages, so a path of any size stays far below
Temporal's limits. Conversions are enforced by the activity at send time (the exit record and the
events table are the source of truth); the `exits` signal only feeds the progress query.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from herald.campaigns.contract import (
        CAMPAIGN_WORKFLOW,
        PATH_WORKFLOW,
        QUERY_STATE,
        SIGNAL_EXITS,
        CampaignActivitiesContract,
        CampaignSnapshot,
        FinishRequest,
        MessageProgress,
        PageRequest,
        PageResult,
        PathRun,
        PlanRequest,
        path_workflow_id,
    )
    from herald.core import search_attributes as sa
    from models.enums import CampaignStatus, MessageStatus
    from workflows.policies import CAMPAIGN_RETRY

# Sending must outlast database or provider outages: retry with back-off, never give up.
# A page takes well under a second; a short timeout means a page lost with its worker is
# retried within half a minute (retrying is safe: rows are keyed per recipient).
_ACTIVITY = {"start_to_close_timeout": timedelta(seconds=30), "retry_policy": CAMPAIGN_RETRY}
# ~6 history events per page: continuing well before 4k events keeps every run small.
PAGES_PER_RUN = 400
SIGNALS_PER_RUN = 1_000


@workflow.defn(name=CAMPAIGN_WORKFLOW)
class CampaignWorkflow:
    def __init__(self) -> None:
        self.status = CampaignStatus.scheduled

    @workflow.run
    async def run(self, snapshot: CampaignSnapshot) -> str:
        settings = snapshot.settings
        audience = await workflow.execute_activity_method(
            CampaignActivitiesContract.count_campaign_audience, snapshot, **_ACTIVITY
        )
        if audience == 0:
            await self._finish(settings.campaign_id, CampaignStatus.cancelled, "no_recipients")
            return CampaignStatus.cancelled
        self.status = CampaignStatus.sending
        children = []
        for path in snapshot.paths:
            tags = None
            if snapshot.search_attributes:
                tags = sa.attributes(kind="campaign_path", campaign_id=settings.campaign_id)
            children.append(
                await workflow.start_child_workflow(
                    PATH_WORKFLOW,
                    PathRun(
                        settings=settings,
                        path=path,
                        all_paths=snapshot.paths,
                        search_attributes=snapshot.search_attributes,
                    ),
                    id=path_workflow_id(settings.campaign_id, path.id),
                    search_attributes=tags,
                )
            )
        # Cancelling this workflow (unschedule, cancel) cancels the children with it.
        await asyncio.gather(*children)
        await self._finish(settings.campaign_id, CampaignStatus.sent, None)
        self.status = CampaignStatus.sent
        return CampaignStatus.sent

    async def _finish(self, campaign_id: str, status: str, reason: str | None) -> None:
        await workflow.execute_activity_method(
            CampaignActivitiesContract.finish_campaign,
            FinishRequest(campaign_id=campaign_id, status=status, reason=reason),
            **_ACTIVITY,
        )

    @workflow.query(name=QUERY_STATE)
    def state(self) -> str:
        return self.status


@workflow.defn(name=PATH_WORKFLOW)
class CampaignPathWorkflow:
    def __init__(self) -> None:
        self.run_state: PathRun | None = None
        self.pages_this_run = 0
        self.signals_this_run = 0

    @workflow.signal(name=SIGNAL_EXITS)
    def exits(self, count: int) -> None:
        self.signals_this_run += 1
        if self.run_state is not None:
            self.run_state.exits_seen += count

    @workflow.query(name=QUERY_STATE)
    def state(self) -> PathRun | None:
        return self.run_state

    @workflow.run
    async def run(self, state: PathRun) -> PathRun:
        self.run_state = state
        messages = state.path.messages
        if not state.progress:
            state.progress = [MessageProgress(message_id=m.id) for m in messages]
        while state.message_index < len(messages):
            message = messages[state.message_index]
            progress = state.progress[state.message_index]
            if state.plan is None:
                state.plan = await workflow.execute_activity_method(
                    CampaignActivitiesContract.plan_message,
                    PlanRequest(
                        settings=state.settings,
                        path=state.path,
                        all_paths=state.all_paths,
                        message_id=message.id,
                        now=workflow.now(),
                    ),
                    **_ACTIVITY,
                )
                progress.audience = state.plan.audience
            while state.wave_index < len(state.plan.waves):
                wave = state.plan.waves[state.wave_index]
                remaining = (wave.at - workflow.now()).total_seconds()
                if remaining > 0:
                    progress.state, progress.next_wave_at = "waiting", wave.at
                    await workflow.sleep(remaining)
                progress.state, progress.next_wave_at = "sending", None
                done = False
                while not done:
                    if self._should_continue():
                        workflow.continue_as_new(state)
                    page: PageResult = await workflow.execute_activity_method(
                        CampaignActivitiesContract.send_page,
                        PageRequest(
                            settings=state.settings,
                            path=state.path,
                            all_paths=state.all_paths,
                            message_id=message.id,
                            wave=wave,
                            after_profile_id=state.cursor,
                            sent_in_wave=state.sent_in_wave,
                            now=workflow.now(),
                        ),
                        **_ACTIVITY,
                    )
                    self.pages_this_run += 1
                    _add(progress, page)
                    state.cursor = page.last_profile_id or state.cursor
                    state.sent_in_wave += page.recipients
                    done = page.done or (
                        wave.limit is not None and state.sent_in_wave >= wave.limit
                    )
                state.wave_index += 1
                state.sent_in_wave = 0
                if wave.timezones is not None:
                    # Local-time waves each cover their own timezones from the start; staggered
                    # waves go on from where the previous one stopped.
                    state.cursor = None
            progress.state = "sent"
            await workflow.execute_activity_method(
                CampaignActivitiesContract.mark_message,
                FinishRequest(
                    campaign_id=state.settings.campaign_id,
                    message_id=message.id,
                    status=MessageStatus.sent,
                ),
                **_ACTIVITY,
            )
            state.message_index += 1
            state.plan, state.wave_index, state.cursor = None, 0, None
        return state

    def _should_continue(self) -> bool:
        return (
            self.pages_this_run >= PAGES_PER_RUN
            or self.signals_this_run >= SIGNALS_PER_RUN
            or workflow.info().is_continue_as_new_suggested()
        )


def _add(progress: MessageProgress, page: PageResult) -> None:
    progress.sent += page.sent
    progress.failed += page.failed
    progress.unknown += page.unknown
    for reason, count in page.skipped.items():
        progress.skipped[reason] = progress.skipped.get(reason, 0) + count
