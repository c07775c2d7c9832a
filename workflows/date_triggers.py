"""DateTriggerWorkflow: started every hour by a Temporal Schedule to enrol date property flows.

The schedule (`ensure_date_trigger_schedule`, called at worker start) fires at minute 0 of every
hour (UTC) and skips a run while the previous one is still going. Each run passes the time it was
scheduled for to `enrol_date_triggers`, so the activity never reads the wall clock: a run that
starts late (a busy worker, a catch-up after the server was down) still checks the hour it was
meant for.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.client import (
    Client,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

with workflow.unsafe.imports_passed_through():
    from herald.core.config import Settings
    from herald.flows.date_triggers import DateTriggerActivitiesContract, DateTriggerCounts
    from workflows.policies import SCHEDULED_JOB_RETRY
    from workflows.schedules import ensure_schedule, scheduled_time

DATE_TRIGGER_SCHEDULE_ID = "herald-date-triggers"
# The schedule appends the scheduled time to this ID for each run.
DATE_TRIGGER_WORKFLOW_ID = "herald/date-triggers"
DATE_TRIGGER_CRON = "0 * * * *"  # minute 0 of every hour, UTC

# A run gives up before the next hour's run is due, so one stuck hour never blocks the next
# (the overlap policy skips a run while the previous one is still open).
ACTIVITY_DEADLINE = timedelta(minutes=50)
RUN_TIMEOUT = timedelta(minutes=55)


@workflow.defn(name="DateTriggers")
class DateTriggerWorkflow:
    @workflow.run
    async def run(self) -> DateTriggerCounts:
        return await workflow.execute_activity_method(
            DateTriggerActivitiesContract.enrol_date_triggers,
            scheduled_time(),
            start_to_close_timeout=timedelta(minutes=10),
            schedule_to_close_timeout=ACTIVITY_DEADLINE,
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=SCHEDULED_JOB_RETRY,
        )


async def ensure_date_trigger_schedule(
    client: Client, settings: Settings, schedule_id: str = DATE_TRIGGER_SCHEDULE_ID
) -> None:
    """Create the hourly schedule once; every worker calls this and all but the first no-op.

    An existing schedule is left as it is (an operator may have paused it).
    """
    await ensure_schedule(
        client,
        settings,
        schedule_id,
        DateTriggerWorkflow.run,
        workflow_id=DATE_TRIGGER_WORKFLOW_ID,
        kind="date_triggers",
        execution_timeout=RUN_TIMEOUT,
        spec=ScheduleSpec(cron_expressions=[DATE_TRIGGER_CRON]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(hours=1)
        ),
    )
