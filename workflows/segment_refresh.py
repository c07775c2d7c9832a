"""SegmentRefreshWorkflow: started every 15 minutes by a Temporal Schedule.

Routing keeps membership current when events and profile changes arrive; what changes with the
clock alone ("placed an order in the last 30 days": someone drops out without doing anything)
and journey results (deliveries and exits are not routed events) are recomputed here. Like the
date-trigger run, it evaluates at the time the schedule fired for, not the wall clock.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.client import (
    Client,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

with workflow.unsafe.imports_passed_through():
    from herald.core.config import Settings
    from herald.segments.contract import SegmentRefreshActivitiesContract, SegmentRefreshCounts
    from workflows.policies import SCHEDULED_JOB_RETRY
    from workflows.schedules import ensure_schedule, scheduled_time

SEGMENT_REFRESH_SCHEDULE_ID = "herald-segment-refresh"
SEGMENT_REFRESH_WORKFLOW_ID = "herald/segment-refresh"
SEGMENT_REFRESH_EVERY = timedelta(minutes=15)
RUN_TIMEOUT = timedelta(minutes=14)


@workflow.defn(name="SegmentRefresh")
class SegmentRefreshWorkflow:
    @workflow.run
    async def run(self) -> SegmentRefreshCounts:
        return await workflow.execute_activity_method(
            SegmentRefreshActivitiesContract.refresh_time_relative_segments,
            scheduled_time(),
            start_to_close_timeout=timedelta(minutes=10),
            schedule_to_close_timeout=timedelta(minutes=13),
            retry_policy=SCHEDULED_JOB_RETRY,
        )


async def ensure_segment_refresh_schedule(
    client: Client, settings: Settings, schedule_id: str = SEGMENT_REFRESH_SCHEDULE_ID
) -> None:
    """Create the schedule once; an existing one is left as it is (an operator may pause it)."""
    await ensure_schedule(
        client,
        settings,
        schedule_id,
        SegmentRefreshWorkflow.run,
        workflow_id=SEGMENT_REFRESH_WORKFLOW_ID,
        kind="segment_refresh",
        execution_timeout=RUN_TIMEOUT,
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=SEGMENT_REFRESH_EVERY)]),
        # A missed run is not caught up: the next one recomputes everything anyway.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
