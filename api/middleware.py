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

from api.deps import check_key_before_body
from api.errors import ApiError, payload_too_large

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
            await _send_error(send, payload_too_large(MAX_BODY_BYTES), close=True)
            return
        status = 500
        started = time.perf_counter()
        # A chunked body has no length up front: count it as it streams in.
        has_body = b"transfer-encoding" in headers or (length or b"0") != b"0"
        received, body_done, key_checked, response_started = 0, not has_body, False, False

        async def receive_capped() -> Message:
            nonlocal received, body_done, key_checked
            if not key_checked:
                key_checked = True  # routing is done once the app asks for the body
                await check_key_before_body(scope)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise payload_too_large(MAX_BODY_BYTES)
                body_done = not message.get("more_body", False)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                extra = [(b"x-request-id", request_id.encode())]
                if not body_done:
                    # Answered before the body was read (401, 413): close rather than let the
                    # server drain a body nobody wants.
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive_capped, send_with_id)
        except ApiError as exc:
            # Raised while reading the body outside a route's error handling (e.g. in the gzip
            # middleware): still the API's answer, not a 500.
            if response_started:
                raise
            status = exc.status
            await _send_error(send, exc, close=not body_done)
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


class GzipRequestMiddleware:
    """Accepts gzip-compressed request bodies (Segment SDKs send them with gzip=True).

    Inflates as the app reads, so the cap holds on the inflated size without buffering the
    compressed body first, and a caller's key is checked before any of it is read.
    """

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
        # In place, not a copy: the outer middleware reads the matched route from this scope.
        scope["headers"] = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
        ]
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        inflated, finished = 0, False

        async def inflate() -> Message:
            nonlocal inflated, finished
            if finished:
                return await receive()
            message = await receive()
            if message["type"] != "http.request":
                return message
            more = message.get("more_body", False)
            try:
                body = decompressor.decompress(
                    message.get("body", b""), MAX_BODY_BYTES + 1 - inflated
                )
            except zlib.error:
                raise _invalid_gzip() from None
            inflated += len(body)
            if inflated > MAX_BODY_BYTES or decompressor.unconsumed_tail:
                raise payload_too_large(MAX_BODY_BYTES)
            if not more:
                finished = True
                if not decompressor.eof:
                    raise _invalid_gzip()
            return {"type": "http.request", "body": body, "more_body": more}

        await self.app(scope, inflate, send)


def _invalid_gzip() -> ApiError:
    reason = "the body is not valid gzip"
    return ApiError(400, "invalid_gzip", reason, [{"field": "body", "reason": reason}])


async def _send_error(send: Send, exc: ApiError, close: bool) -> None:
    body = json.dumps({"code": exc.code, "message": exc.message, "errors": exc.errors}).encode()
    headers = [(b"content-type", b"application/json")]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
