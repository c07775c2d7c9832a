"""The naive campaign design bench/campaigns.py compares Herald with: one activity per recipient.

One workflow fans out the real per-message `deliver` activity (activities/delivery.py, run_kind
"campaign") once per recipient, at most `concurrency` in flight (Temporal allows 2,000 pending
activities per workflow). Every recipient costs three history events and a round trip through
the server, which is why Herald's path workflow sends pages of 1,000 in one activity instead.

A module of its own (not bench/campaigns.py, which runs as __main__) so the workflow sandbox can
re-import it by name. Its worker runs in its own process, started by `bench/campaigns.py
--naive-worker`, so it competes for the CPU the way Herald's worker does. Benchmark only.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from herald.flows.graph import MessageContent
    from models.delivery_dto import DeliveryRequest, DeliveryResult
    from models.enums import Channel

WORKFLOW_TYPE = "BenchNaiveCampaign"


class NaiveSend(BaseModel):
    campaign_id: str
    message_id: str
    channel: Channel
    content: MessageContent
    profile_ids: list[str]
    concurrency: int = 100


@workflow.defn(name=WORKFLOW_TYPE)
class NaiveCampaignWorkflow:
    @workflow.run
    async def run(self, job: NaiveSend) -> dict[str, int]:
        slots = asyncio.Semaphore(job.concurrency)
        outcomes: dict[str, int] = {}

        async def one(profile_id: str) -> None:
            async with slots:
                result: DeliveryResult = await workflow.execute_activity(
                    "deliver",
                    DeliveryRequest(
                        idempotency_key=f"campaign:{job.campaign_id}:{job.message_id}:{profile_id}",
                        run_kind="campaign",
                        run_id=job.campaign_id,
                        step_id=job.message_id,
                        profile_id=profile_id,
                        channel=job.channel,
                        content=job.content,
                        smart_sending=False,
                    ),
                    result_type=DeliveryResult,
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                )
            outcomes[result.status] = outcomes.get(result.status, 0) + 1

        await asyncio.gather(*(one(p) for p in job.profile_ids))
        return outcomes


async def run_worker(address: str, task_queue: str, database_url: str) -> None:
    """The naive design's worker: this workflow and Herald's delivery activities, wired the way
    worker.py wires them (pydantic converter, 16 activity threads, outbox provider)."""
    from common import serve
    from temporalio.worker import Worker

    from activities.delivery import DeliveryActivities
    from herald.core.config import Settings
    from herald.core.db import make_engine
    from herald.core.temporal import connect

    settings = Settings(temporal_address=address, database_url=database_url, task_queue=task_queue)
    client = await connect(settings, attempts=30)
    engine = make_engine(settings.resolved_database_url)
    delivery = DeliveryActivities(engine, settings)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[NaiveCampaignWorkflow],
        activities=[delivery.deliver],
        activity_executor=ThreadPoolExecutor(max_workers=16),
    )
    await serve(worker)
    engine.dispose()
