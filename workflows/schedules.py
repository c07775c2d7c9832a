"""Herald's Temporal Schedules (date triggers, RFM, segment refresh): created once, read back.

Every worker calls `ensure_schedule` at start; the first creates the schedule, the others find
it and leave it as it is, so an operator who paused or moved one keeps that change.
"""

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.common import SearchAttributeKey, TypedSearchAttributes

with workflow.unsafe.imports_passed_through():
    from herald.core.config import Settings
    from herald.core.search_attributes import attributes

# Set by the server on every workflow a schedule starts.
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def scheduled_time() -> datetime:
    """The time the schedule fired for (a manual trigger: when it was triggered), else now."""
    return workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME) or workflow.now()


async def ensure_schedule(
    client: Client,
    settings: Settings,
    schedule_id: str,
    run: Callable[..., Any],
    *,
    workflow_id: str,
    kind: str,
    execution_timeout: timedelta,
    spec: ScheduleSpec,
    policy: SchedulePolicy,
) -> None:
    """Creates the schedule that starts `run` (a workflow's run method) unless it exists."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            run,
            id=workflow_id,
            task_queue=settings.task_queue,
            execution_timeout=execution_timeout,
            typed_search_attributes=(
                attributes(kind=kind) if settings.search_attributes else TypedSearchAttributes.empty
            ),
        ),
        spec=spec,
        policy=policy,
    )
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(schedule_id, schedule)
