"""The API's lazy link to Temporal: the API serves (and ingests) even while Temporal is down."""

import asyncio

from temporalio.client import Client

from herald.config import Settings
from herald.temporal import connect


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
