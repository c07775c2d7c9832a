"""A small world for flow scenario tests: time-skipping Temporal, a worker, routing by hand.

The router workflow is not started (its long-polling activity would keep the test server from
skipping time); tests route the outbox explicitly with `route()`, which runs the same activity
code and handlers the router runs. `advance()` moves simulated time; `settle()` waits until every
running enrollment is parked on a timer, an event, the review queue or has closed.
"""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from temporalio.client import Client
from temporalio.worker import Worker

from activities.campaign_routing import CampaignRoutingHandler
from activities.engagement_routing import EngagementHandler
from activities.flow_routing import FlowRoutingHandler, TemporalBridge
from activities.metric_stats import MetricStatsHandler
from activities.routing import RouterActivities
from activities.segment_routing import SegmentRoutingHandler
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.flows.contract import QUERY_STATE, EnrollmentState
from herald.flows.graph import FlowDefinition
from herald.ingest.events import MetricDirectory, ingest
from herald.profiles.consent import set_consent
from models.enums import Channel, ConsentStatus
from models.events import EventIn
from models.flows import Flow, FlowEnrollment, FlowVersion
from models.profile import Profile
from worker import build_worker


class FlowWorld:
    def __init__(self, env, db, settings: Settings) -> None:
        self.env = env
        self.client: Client = env.client
        self.db = db
        self.settings = settings
        self.metrics = MetricDirectory()
        bridge = TemporalBridge(
            self.client, asyncio.get_running_loop(), settings.task_queue, search_attributes=False
        )
        self.flow_handler = FlowRoutingHandler(bridge)
        self.segment_handler = SegmentRoutingHandler()
        self.router = RouterActivities(
            db.engine,
            [
                MetricStatsHandler(),
                EngagementHandler(),
                self.segment_handler,
                self.flow_handler,
                CampaignRoutingHandler(bridge),
            ],
        )

    # ---- setup -----------------------------------------------------------------------------

    def flow(self, definition: dict[str, Any], status: str = "live", name: str = "flow") -> str:
        parsed = FlowDefinition.model_validate(definition)
        flow_id = new_id("fl")
        trigger = parsed.trigger
        key = (
            getattr(trigger, "metric", None)
            or getattr(trigger, "list_id", None)
            or getattr(trigger, "segment_id", None)
        )
        with session_scope(self.db.engine) as session:
            session.add(
                Flow(
                    id=flow_id,
                    name=name,
                    status=status,
                    trigger_type=trigger.type,
                    trigger_key=key,
                    exit_metric=parsed.exit_metric,
                )
            )
            session.flush()
            session.add(
                FlowVersion(flow_id=flow_id, version=1, definition=parsed.model_dump(mode="json"))
            )
        return flow_id

    def new_version(self, flow_id: str, definition: dict[str, Any]) -> int:
        parsed = FlowDefinition.model_validate(definition)
        with session_scope(self.db.engine) as session:
            flow = session.get(Flow, flow_id)
            flow.latest_version += 1
            flow.exit_metric = parsed.exit_metric
            session.add(flow)
            session.add(
                FlowVersion(
                    flow_id=flow_id,
                    version=flow.latest_version,
                    definition=parsed.model_dump(mode="json"),
                )
            )
            return flow.latest_version

    def profile(
        self,
        email: str,
        timezone: str | None = None,
        phone: str | None = None,
        consent: tuple[str, ...] = ("email",),
        **properties: Any,
    ) -> str:
        with session_scope(self.db.engine) as session:
            profile = Profile(
                id=new_id("pr"),
                email=email,
                phone=phone,
                timezone=timezone,
                properties=properties,
            )
            session.add(profile)
            session.flush()
            for channel in consent:
                set_consent(session, profile, Channel(channel), ConsentStatus.subscribed, "test")
            return profile.id

    def set_consent(self, profile_id: str, channel: str, status: str) -> None:
        with session_scope(self.db.engine) as session:
            profile = session.get(Profile, profile_id)
            set_consent(session, profile, Channel(channel), ConsentStatus(status), "test")

    # ---- events and routing ----------------------------------------------------------------

    async def now(self) -> datetime:
        return (await self.env.get_current_time()).astimezone(UTC)

    async def event(
        self,
        metric: str,
        profile_id: str,
        unique_id: str | None = None,
        value: float | None = None,
        backfill: bool = False,
        ago: timedelta = timedelta(0),
        **properties: Any,
    ) -> None:
        """Records an event at the current simulated time (minus `ago`) and routes it."""
        body = {
            "metric": metric,
            "profile": {"email": self.email(profile_id)},
            "unique_id": unique_id or uuid.uuid4().hex,
            "properties": properties,
            "time": (await self.now() - ago).isoformat(),
            "backfill": backfill,
        }
        if value is not None:
            body["value"] = value
        ingest(self.db.engine, self.metrics, [EventIn.model_validate(body)], "test")
        await self.route()

    async def events(self, metric: str, unique_ids: dict[str, str]) -> None:
        """One event per profile ({profile id: unique id}), stored together and routed once."""
        now = (await self.now()).isoformat()
        batch = [
            EventIn.model_validate(
                {
                    "metric": metric,
                    "profile": {"email": self.email(profile_id)},
                    "unique_id": unique_id,
                    "time": now,
                }
            )
            for profile_id, unique_id in unique_ids.items()
        ]
        ingest(self.db.engine, self.metrics, batch, "test")
        await self.route()

    async def route(self) -> None:
        # Routing runs outside an activity here: give it the simulated clock.
        now = await self.now()
        self.flow_handler.clock = self.segment_handler.clock = lambda: now
        while await asyncio.to_thread(self.router.route_once):
            pass  # route batches until the outbox is empty
        await self.settle()

    def email(self, profile_id: str) -> str:
        return self.db.scalar("SELECT email FROM profile WHERE id = :p", p=profile_id)

    # ---- time ------------------------------------------------------------------------------

    async def advance(self, delta: timedelta, margin: timedelta = timedelta(seconds=30)) -> None:
        """Moves simulated time on by `delta` plus a small margin, so that a timer due exactly
        at the end (set a few real milliseconds after the test's own reference point) fires."""
        await self.env.sleep(delta + margin)
        await self.settle()

    async def settle(self, within: float = 20.0) -> None:
        """Waits until every running enrollment is parked (timer, event, review) or closed."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            states = await self.states(running_only=True)
            now = await self.now()

            def parked(s: EnrollmentState, now=now) -> bool:
                # A timer that is already due has fired; its run is about to move on.
                due = s.next_wake_at is not None and s.next_wake_at <= now
                return s.status != "running" or (s.waiting_for is not None and not due)

            if all(parked(s) for s in states):
                # The close activity may still be writing: wait for the rows to agree too.
                open_rows = self.db.scalar(
                    "SELECT count(*) FROM flow_enrollment WHERE status = 'running'"
                )
                if open_rows == sum(1 for s in states if s.status == "running"):
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"enrollments did not settle: {states}")
            await asyncio.sleep(0.02)

    async def until(self, condition, within: float = 20.0) -> None:
        """Waits (real time) for a condition that an in-flight activity will make true."""
        deadline = asyncio.get_running_loop().time() + within
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached")
            await asyncio.sleep(0.02)
        await self.settle()

    async def states(self, running_only: bool = False) -> list[EnrollmentState]:
        with session_scope(self.db.engine) as session:
            stmt = select(FlowEnrollment.workflow_id)
            if running_only:
                stmt = stmt.where(FlowEnrollment.status == "running")
            ids = list(session.execute(stmt).scalars())
        return [await self.state(wid) for wid in ids]

    async def state(self, workflow_id: str) -> EnrollmentState:
        handle = self.client.get_workflow_handle(workflow_id)
        return await handle.query(QUERY_STATE, result_type=EnrollmentState)

    # ---- what happened ---------------------------------------------------------------------

    def sent(self, profile_id: str | None = None) -> list[tuple[str, str, str]]:
        """(step id, channel, body) of every message handed to the outbox provider, in order."""
        sql = (
            "SELECT d.step_id, m.channel, m.body FROM message_outbox m "
            "JOIN delivery d ON d.id = m.delivery_id"
        )
        if profile_id:
            return [
                tuple(r)
                for r in self.db.rows(sql + " WHERE m.profile_id = :p ORDER BY m.id", p=profile_id)
            ]
        return [tuple(r) for r in self.db.rows(sql + " ORDER BY m.id")]

    def deliveries(self, profile_id: str) -> list[tuple[str, str, str | None]]:
        return [
            tuple(r)
            for r in self.db.rows(
                "SELECT step_id, status, reason FROM delivery WHERE profile_id = :p "
                "ORDER BY created_at, id",
                p=profile_id,
            )
        ]

    def enrollments(self, profile_id: str) -> list[Any]:
        return self.db.rows(
            "SELECT workflow_id, status, exit_reason, version FROM flow_enrollment "
            "WHERE profile_id = :p ORDER BY started_at",
            p=profile_id,
        )


async def start_world(env, db, **overrides) -> tuple[FlowWorld, Worker]:
    settings = Settings(
        database_url=db.url,
        task_queue=f"flows-{uuid.uuid4().hex[:8]}",
        search_attributes=False,
        **overrides,
    )
    world = FlowWorld(env, db, settings)
    worker = build_worker(env.client, settings, db.engine)
    return world, worker


def at(day: datetime, hour: int, minute: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute, second=0, microsecond=0)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


ONE_DAY = timedelta(days=1)
