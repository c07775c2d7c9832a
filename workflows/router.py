"""EventRouterWorkflow: one long-running workflow that drains the routing outbox forever."""

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from herald.routing.contract import RouterActivitiesContract
    from workflows.policies import ROUTER_RETRY


ROUTER_WORKFLOW_ID = "herald/router"
# Each batch adds ~6 history events; continuing well before Temporal's 4k-event suggestion keeps
# replays cheap even on servers that cannot report the suggestion (the test server).
MAX_BATCHES_PER_RUN = 400


@dataclass
class RouterState:
    routed_total: int = 0
    runs: int = 0
    max_batches_per_run: int = MAX_BATCHES_PER_RUN


@workflow.defn(name="EventRouter")
class EventRouterWorkflow:
    def __init__(self) -> None:
        self.state = RouterState()
        self.batches = 0

    @workflow.run
    async def run(self, state: RouterState) -> None:
        self.state = state
        while True:
            routed = await workflow.execute_activity_method(
                RouterActivitiesContract.route_pending,
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=timedelta(seconds=10),
                # Routing must never give up: a database outage is retried until it ends.
                retry_policy=ROUTER_RETRY,
            )
            self.state.routed_total += routed
            self.batches += 1
            if (
                self.batches >= state.max_batches_per_run
                or workflow.info().is_continue_as_new_suggested()
            ):
                workflow.continue_as_new(
                    RouterState(
                        routed_total=self.state.routed_total,
                        runs=self.state.runs + 1,
                        max_batches_per_run=state.max_batches_per_run,
                    )
                )

    @workflow.query
    def status(self) -> RouterState:
        return self.state
