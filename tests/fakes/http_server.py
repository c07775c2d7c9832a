"""A real local HTTP server for playing a provider in tests (Twilio, FCM, Postmark, webhooks).

It listens on 127.0.0.1 in a thread, hands every request to the test's `handler` and records
it, so a test checks exactly what Herald put on the wire. Handlers answer `Reply`s.
"""

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def form(self) -> dict[str, list[str]]:
        """The body as application/x-www-form-urlencoded fields (every value kept)."""
        return parse_qs(self.body.decode(), keep_blank_values=True, strict_parsing=True)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = b""  # bytes, str, or anything JSON-serialisable
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, bytes):
            return self.body, headers
        if isinstance(self.body, str):
            return self.body.encode(), headers
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(self.body).encode(), headers


Handler = Callable[[Request], Reply]


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 resets clients that open dozens of connections at
    # once, as a provider's concurrent sender does.
    request_queue_size = 128


class FakeServer:
    def __init__(self, handler: Handler):
        self.handler = handler
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the body waits for the
            # client's delayed ACK (40 ms on Linux) on every kept-alive request.
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                )
                with fake._lock:
                    fake.requests.append(request)
                try:
                    reply = fake.handler(request)
                except Exception as exc:  # a failed check in the handler: answer and show it
                    reply = Reply(500, {"fake_server_error": repr(exc)})
                body, headers = reply.encoded()
                self.send_response(reply.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeServer":
        # A short poll interval: stop() waits up to one, once per test.
        serve = self._server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def fake_server(handler: Handler) -> Iterator[FakeServer]:
    server = FakeServer(handler).start()
    try:
        yield server
    finally:
        server.stop()
