"""Pure ASGI middleware: request ids, Prometheus metrics, body-size limit, one log line a request.

Pure ASGI (not BaseHTTPMiddleware) because it sits on the ingest hot path.
"""

import json
import time
import uuid
import zlib

import structlog
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("herald_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "herald_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MAX_BODY_BYTES = 10 * 1024 * 1024

log = structlog.get_logger("herald.api")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode()[:64] or uuid.uuid4().hex
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _reject_too_large(send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], path, str(status)).inc()
            LATENCY.labels(scope["method"], path).observe(elapsed)
            if status >= 400 or path not in _QUIET_ROUTES:
                log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round(elapsed * 1000, 1),
                )
            structlog.contextvars.unbind_contextvars("request_id")


# High-volume endpoints are measured by metrics, not logged line by line when they succeed.
_QUIET_ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/events",
    "/v1/events/batch",
    "/v1/track",
    "/v1/identify",
    "/v1/batch",
}


async def _reject_too_large(send: Send) -> None:
    await _reject(send, 413, "payload_too_large", "request body exceeds 10 MiB")


class GzipRequestMiddleware:
    """Accepts gzip-compressed request bodies (Segment SDKs send them with gzip=True)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-encoding", b"").lower() != b"gzip":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = decompressor.decompress(b"".join(chunks), MAX_BODY_BYTES + 1)
        except zlib.error:
            await _reject(send, 400, "invalid_gzip", "the body is not valid gzip")
            return
        if len(body) > MAX_BODY_BYTES or decompressor.unconsumed_tail:
            await _reject_too_large(send)
            return
        scope = dict(scope)
        scope["headers"] = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
        ] + [(b"content-length", str(len(body)).encode())]
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _reject(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(
        {"code": code, "message": message, "errors": [{"field": "body", "reason": message}]}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
