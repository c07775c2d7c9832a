"""The worker's providers per channel, and the one event loop their connections live on.

Send activities run in worker threads with blocking database work; providers are async and
keep pools (SMTP connections, HTTP keep-alive) across messages. The hub runs them on its own
loop thread and hands results back, so pools outlive any one activity. Each send looks up the
channel's setting row (a primary-key read): a provider changed through the API is rebuilt on
the next send, on every worker, with no restart.
"""

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import structlog
from sqlmodel import Session

from herald.core.config import Settings
from herald.delivery.channels import OutboxProvider
from herald.delivery.providers.base import OutgoingMessage, Provider, SendOutcome
from models.enums import Channel

log = structlog.get_logger("herald.delivery")

AnyProvider = Provider | OutboxProvider
# (session, channel) -> (version stamp, factory): what the channel is configured to use now.
Resolver = Callable[[Session, Channel], tuple[Any, Callable[[], AnyProvider]]]


class ProviderHub:
    def __init__(
        self,
        settings: Settings,
        *,
        fixed: Mapping[str, AnyProvider] | None = None,
        resolver: Resolver | None = None,
    ):
        self.settings = settings
        self._fixed = {Channel(k): v for k, v in (fixed or {}).items()}
        self._resolver = resolver
        self._cache: dict[Channel, tuple[Any, AnyProvider]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- which provider ----

    def provider(self, session: Session, channel: Channel) -> AnyProvider:
        if channel in self._fixed:
            return self._fixed[channel]
        if self._resolver is None:
            from herald.delivery.provider_settings import resolve

            self._resolver = lambda s, c: resolve(s, c, self.settings)
        stamp, factory = self._resolver(session, channel)
        with self._lock:
            cached = self._cache.get(channel)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            provider = factory()
            self._cache[channel] = (stamp, provider)
        if cached is not None and isinstance(cached[1], Provider):
            self.submit(cached[1].aclose())  # the old pool drains on the hub's loop
        return provider

    # ---- running provider calls ----

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="herald-providers", daemon=True
                ).start()
                self._loop = loop
            return self._loop

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._running_loop())

    def send_many(
        self,
        provider: Provider,
        messages: Sequence[OutgoingMessage],
        timeout: float,
        deadline: float | None = None,
    ) -> list[SendOutcome]:
        """Sends on the hub's loop and waits (this thread holds no transaction meanwhile). Past
        `timeout` the sends are cancelled, so none outlives the attempt that claimed it."""
        future = self.submit(provider.send_many(messages, deadline=deadline))
        try:
            return list(future.result(timeout))
        except TimeoutError:
            future.cancel()
            raise

    def check(self, provider: Provider, timeout: float) -> None:
        self.submit(provider.check()).result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        providers = [p for _, p in self._cache.values() if isinstance(p, Provider)]
        providers += [p for p in self._fixed.values() if isinstance(p, Provider)]
        if self._loop is None:
            return
        for provider in providers:
            try:
                self.submit(provider.aclose()).result(timeout)
            except Exception as exc:  # closing is best effort: the process is going away
                log.warning("provider close failed", provider=provider.name, error=str(exc))
        self._loop.call_soon_threadsafe(self._loop.stop)
