"""Worker observability: log context for activities, and where the SDK's metrics are served.

Every log line an activity emits carries its workflow id and activity name. The worker's
Prometheus endpoint (the Temporal SDK's metrics) has no authentication, unlike the API's
`/metrics`, so it listens on `worker_metrics_host`: loopback unless a deployment opens it.
"""

from typing import Any

import structlog
from temporalio import activity
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from herald.core.config import Settings


class _BindActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id, activity=info.activity_type, attempt=info.attempt
        ):
            return await self.next.execute_activity(input)


class LogContextInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityContext(next)


def metrics_bind_address(settings: Settings) -> str:
    """host:port for the worker's Prometheus endpoint (an IPv6 host in brackets)."""
    host = settings.worker_metrics_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{settings.worker_metrics_port}"


def metrics_runtime(settings: Settings) -> Runtime:
    """A Temporal runtime that serves the SDK's metrics at `metrics_bind_address`."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(bind_address=metrics_bind_address(settings))
        )
    )
