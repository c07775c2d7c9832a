"""Herald worker: runs every workflow and activity on the Herald task queue.

Stopping (SIGTERM or SIGINT): the worker stops polling, gives running activities
`worker_shutdown_grace_seconds` to finish, then cancels them (async activities at once, sync ones
through the SDK's in-thread CancelledError). An activity blocked in C code (a socket read, a
database lock wait) cannot see that, so the worker waits at most `CANCELLED_ACTIVITY_WAIT_SECONDS`
more and then exits anyway: Temporal retries the abandoned attempt on another worker after its
heartbeat or start-to-close timeout, as after a crash. A second signal exits at once.
"""

import asyncio
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import structlog
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from activities.campaign_routing import CampaignRoutingHandler
from activities.campaigns import CampaignActivities
from activities.date_triggers import DateTriggerActivities
from activities.delivery import DeliveryActivities
from activities.engagement_routing import EngagementHandler
from activities.flow_routing import FlowRoutingHandler, TemporalBridge
from activities.flows import FlowActivities
from activities.metric_stats import MetricStatsHandler
from activities.rfm import RfmActivities
from activities.routing import RouterActivities
from activities.segment_refresh import SegmentRefreshActivities
from activities.segment_routing import SegmentRoutingHandler
from activities.webhooks import WebhookActivities
from herald.core.activity_errors import PermanentErrorInterceptor
from herald.core.config import Settings
from herald.core.db import make_engine
from herald.core.observability import LogContextInterceptor, metrics_runtime
from herald.core.search_attributes import attributes
from herald.core.temporal import connect
from herald.delivery.provider_hub import ProviderHub
from herald.routing.contract import RoutingHandler
from workflows.campaigns import CampaignPathWorkflow, CampaignWorkflow
from workflows.date_triggers import DateTriggerWorkflow, ensure_date_trigger_schedule
from workflows.flow_enrollment import FlowEnrollmentWorkflow
from workflows.rfm import RfmWorkflow, ensure_rfm_schedule
from workflows.router import ROUTER_WORKFLOW_ID, EventRouterWorkflow, RouterState
from workflows.segment_refresh import SegmentRefreshWorkflow, ensure_segment_refresh_schedule

log = structlog.get_logger("herald.worker")

# How long past the grace period cancelled activities get to return before the worker exits.
CANCELLED_ACTIVITY_WAIT_SECONDS = 5.0
# Every workflow type the worker runs. tests/test_replay.py replays saved histories with exactly
# these and fails if one of them has none.
WORKFLOWS = (
    EventRouterWorkflow,
    FlowEnrollmentWorkflow,
    DateTriggerWorkflow,
    RfmWorkflow,
    SegmentRefreshWorkflow,
    CampaignWorkflow,
    CampaignPathWorkflow,
)


def routing_handlers(client: Client, settings: Settings) -> list[RoutingHandler]:
    """Every routing handler, in the order they see each batch."""
    bridge = TemporalBridge(
        client, asyncio.get_running_loop(), settings.task_queue, settings.search_attributes
    )
    return [
        MetricStatsHandler(),
        EngagementHandler(),
        SegmentRoutingHandler(retry_seconds=settings.router_segment_retry_seconds),
        FlowRoutingHandler(bridge),
        CampaignRoutingHandler(bridge),
    ]


def build_worker(
    client: Client,
    settings: Settings,
    engine,
    handlers: list[RoutingHandler] | None = None,
    hub: ProviderHub | None = None,
) -> Worker:
    router = RouterActivities(
        engine,
        handlers=routing_handlers(client, settings) if handlers is None else handlers,
        batch_size=settings.router_batch_size,
        poll_seconds=settings.router_poll_seconds,
        statement_timeout_seconds=settings.router_statement_timeout_seconds,
    )
    flows = FlowActivities(engine)
    # One hub: every send activity shares the providers' connection pools and their loop.
    hub = hub or ProviderHub(settings)
    delivery = DeliveryActivities(engine, settings, hub=hub)
    webhooks = WebhookActivities(settings)
    date_bridge = TemporalBridge(
        client, asyncio.get_running_loop(), settings.task_queue, settings.search_attributes
    )
    dates = DateTriggerActivities(engine, FlowRoutingHandler(date_bridge))
    rfm = RfmActivities(engine)
    segment_refresh = SegmentRefreshActivities(engine)
    campaigns = CampaignActivities(engine, settings, hub=hub)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            router.route_pending,
            flows.record_steps,
            flows.close_enrollment,
            flows.evaluate_conditions,
            flows.prepare_message,
            flows.review_decision,
            flows.apply_profile_action,
            flows.prepare_webhook,
            delivery.deliver,
            webhooks.call_webhook,
            webhooks.send_internal_alert,
            dates.enrol_date_triggers,
            rfm.run_rfm_analysis,
            segment_refresh.refresh_time_relative_segments,
            campaigns.count_campaign_audience,
            campaigns.plan_message,
            campaigns.send_page,
            campaigns.finish_campaign,
            campaigns.mark_message,
        ],
        # Activities do blocking DB I/O, so they run in threads, not on the event loop.
        activity_executor=ThreadPoolExecutor(max_workers=settings.worker_activity_threads),
        max_concurrent_activities=settings.worker_activity_threads,
        max_concurrent_local_activities=settings.worker_activity_threads,
        max_cached_workflows=settings.worker_max_cached_workflows,
        interceptors=[LogContextInterceptor(), PermanentErrorInterceptor()],
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
    )


async def ensure_router(
    client: Client,
    settings: Settings,
    workflow_id: str = ROUTER_WORKFLOW_ID,
    state: RouterState | None = None,
) -> None:
    """Start the router once; every worker calls this and all but the first are no-ops."""
    await client.start_workflow(
        EventRouterWorkflow.run,
        state or RouterState(),
        id=workflow_id,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=attributes(kind="router"),
    )


async def run_worker(settings: Settings) -> None:
    client = await connect(settings, runtime=metrics_runtime(settings), attempts=30)
    engine = make_engine(settings.resolved_database_url)
    hub = ProviderHub(settings)
    worker = build_worker(client, settings, engine, hub=hub)
    await ensure_router(client, settings)
    await ensure_date_trigger_schedule(client, settings)
    await ensure_rfm_schedule(client, settings)
    await ensure_segment_refresh_schedule(client, settings)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # The loop's handler runs on the main thread however busy the activity threads are.
        loop.add_signal_handler(sig, _on_stop_signal, stop, sig)
    log.info("worker started", task_queue=settings.task_queue, temporal=settings.temporal_address)
    async with worker:
        await stop.wait()
        grace = settings.worker_shutdown_grace_seconds
        log.info("worker stopping", grace_seconds=grace)
        try:
            await asyncio.wait_for(worker.shutdown(), grace + CANCELLED_ACTIVITY_WAIT_SECONDS)
        except TimeoutError:
            # Interpreter exit would join the stuck activity threads, i.e. hang: leave now.
            log.warning(
                "worker stopped with activities that ignored cancellation; Temporal retries them",
                waited_seconds=grace + CANCELLED_ACTIVITY_WAIT_SECONDS,
            )
            _exit_now(0)
    hub.close()
    engine.dispose()
    log.info("worker stopped")


def _on_stop_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        log.warning("second stop signal: exiting at once", signal=sig.name)
        _exit_now(128 + sig)
    stop.set()


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
