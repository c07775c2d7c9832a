"""The API's lazy link to Temporal: the API serves (and ingests) even while Temporal is down."""

import asyncio

import structlog
from temporalio.client import Client

from herald.core.config import Settings
from herald.core.temporal import OPERATOR_CALL_TIMEOUT_SECONDS, connect
from herald.flows.cancellation import StopRequest, request_stops

log = structlog.get_logger("herald.api")

# Set on responses of calls that cancel work: whether Temporal was told now, or the periodic
# reconcile will stop the workflows (the database change stands either way).
TEMPORAL_HEADER = "Herald-Temporal"
CANCEL_REQUESTED = "cancel_requested"
PENDING_RECONCILE = "pending_reconcile"


class TemporalLink:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.wait_for(connect(self.settings), timeout=5)
            return self._client

    async def healthy(self) -> bool:
        try:
            client = await self.client()
            return await asyncio.wait_for(client.service_client.check_health(), timeout=3)
        except Exception:
            return False

    async def stop_workflows(self, stops: list[tuple[str, str | None]], rpc_seconds: float) -> str:
        """Asks each workflow (id, exit reason) to cancel; never raises.

        Returns CANCEL_REQUESTED when Temporal took every request (or the workflow had already
        closed), else PENDING_RECONCILE: the router's reconcile repeats what was missed.
        """
        if not stops:
            return CANCEL_REQUESTED
        try:
            client = await asyncio.wait_for(self.client(), rpc_seconds)
        except Exception as exc:  # any failure to connect: the DB change already stands
            log.warning(
                "workflows not cancelled: Temporal unreachable, the reconcile will",
                workflows=len(stops),
                error=repr(exc),
            )
            return PENDING_RECONCILE
        results = await request_stops(client, stops, rpc_seconds)
        failed = sum(1 for r in results if r is StopRequest.failed)
        if failed:
            log.warning("workflows not cancelled, the reconcile will", workflows=failed)
            return PENDING_RECONCILE
        return CANCEL_REQUESTED


async def stop_enrollments(link: TemporalLink, workflow_ids: list[str], reason: str) -> str:
    """Asks the workflows of just-cancelled enrollments to stop (see herald/flows/cancellation.py).

    Returns the `Herald-Temporal` header's value; never raises."""
    stops: list[tuple[str, str | None]] = [(w, reason) for w in workflow_ids]
    return await link.stop_workflows(stops, OPERATOR_CALL_TIMEOUT_SECONDS)
