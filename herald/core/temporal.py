"""Connecting to Temporal the same way from every process."""

import asyncio
from typing import Protocol

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from herald.core.config import Settings

# How long an operator's call (cancel, signal, live query) waits for Temporal before it leaves
# the work to the reconcile or answers from the database's view.
OPERATOR_CALL_TIMEOUT_SECONDS = 2.0


async def connect(
    settings: Settings, runtime: Runtime | None = None, attempts: int = 1, delay: float = 1.0
) -> Client:
    """Connect, retrying `attempts` times: processes may start before the server is up."""
    for attempt in range(attempts):
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=pydantic_data_converter,
                runtime=runtime,
            )
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class TemporalAccess(Protocol):
    """How a domain service reaches Temporal (the API's lazy link is one)."""

    async def client(self) -> Client: ...

    async def stop_workflows(
        self, stops: list[tuple[str, str | None]], rpc_seconds: float
    ) -> str: ...
