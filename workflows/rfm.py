"""RfmWorkflow: started every day at 03:00 UTC by a Temporal Schedule to run the RFM analysis.

The schedule (`ensure_rfm_schedule`, called at worker start) skips a run while the previous one
is still going. Each run scores as of the time it was scheduled for (a manual start may pass its
own `as_of`), so a late or retried run still measures the day it was meant for.
"""

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.client import (
    Client,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from herald.analytics.contract import INVALID_RFM_INPUT, RfmActivitiesContract
    from herald.core.config import Settings
    from workflows.policies import RFM_RETRY
    from workflows.schedules import ensure_schedule, scheduled_time

RFM_SCHEDULE_ID = "herald-rfm"
# The schedule appends the scheduled time to this ID for each run.
RFM_WORKFLOW_ID = "herald/rfm"
RFM_CRON = "0 3 * * *"  # 03:00 UTC every day

# Scoring 100k customers takes seconds; the deadlines leave room for a slow database and for
# retries through a few hours of outage, and end well before the next day's run.
ACTIVITY_DEADLINE = timedelta(hours=6)
RUN_TIMEOUT = timedelta(hours=7)


@workflow.defn(name="RfmAnalysis")
class RfmWorkflow:
    @workflow.run
    async def run(self, as_of_iso: str | None = None) -> dict[str, Any]:
        if as_of_iso is None:
            as_of_iso = scheduled_time().isoformat()
        else:
            try:
                datetime.fromisoformat(as_of_iso)
            except ValueError as exc:
                raise ApplicationError(
                    f"as_of {as_of_iso!r} is not an ISO 8601 time",
                    type=INVALID_RFM_INPUT,
                    non_retryable=True,
                ) from exc
        return await workflow.execute_activity_method(
            RfmActivitiesContract.run_rfm_analysis,
            as_of_iso,
            start_to_close_timeout=timedelta(minutes=30),
            schedule_to_close_timeout=ACTIVITY_DEADLINE,
            retry_policy=RFM_RETRY,
        )


async def ensure_rfm_schedule(
    client: Client, settings: Settings, schedule_id: str = RFM_SCHEDULE_ID
) -> None:
    """Create the daily schedule once; every worker calls this and all but the first no-op.

    An existing schedule is left as it is (an operator may have paused or moved it).
    """
    await ensure_schedule(
        client,
        settings,
        schedule_id,
        RfmWorkflow.run,
        workflow_id=RFM_WORKFLOW_ID,
        kind="rfm",
        execution_timeout=RUN_TIMEOUT,
        spec=ScheduleSpec(cron_expressions=[RFM_CRON]),
        # A server that was down at 03:00 still runs that day's analysis when it is back.
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(hours=12)
        ),
    )
