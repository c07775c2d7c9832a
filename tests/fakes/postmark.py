"""A fake Postmark API for `fake_server`: checks each request the way Postmark's docs say it
does, and answers in Postmark's shapes.

- Every request needs `X-Postmark-Server-Token` (else 401, ErrorCode 10) and `Accept:
  application/json`; a POST needs `Content-Type: application/json` (else 422, ErrorCode 409).
- `POST /email/batch` takes a JSON array of at most 500 messages (else 422, ErrorCode 410) and
  answers 200 with one result per message, in order: ErrorCode 0 with a MessageID, 406 for an
  inactive recipient, 300 for a message missing a required field or using one Postmark does not
  know (so a misspelt field fails the test instead of being dropped silently).
- `GET /server` answers the server's settings.
- `fail_with` answers every request with one Reply (an outage, a rate limit).
"""

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.fakes.http_server import Reply, Request

MAX_BATCH = 500
MESSAGE_FIELDS = frozenset(
    {
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Tag",
        "HtmlBody",
        "TextBody",
        "ReplyTo",
        "Headers",
        "TrackOpens",
        "TrackLinks",
        "Metadata",
        "Attachments",
        "MessageStream",
    }
)
TRACK_LINKS = frozenset({"None", "HtmlAndText", "HtmlOnly", "TextOnly"})
# Postmark's metadata limits: 10 fields, names up to 20 characters, values up to 80.
MAX_METADATA_FIELDS, MAX_METADATA_NAME, MAX_METADATA_VALUE = 10, 20, 80


def _error(status: int, code: int, message: str) -> Reply:
    return Reply(status, {"ErrorCode": code, "Message": message})


class FakePostmark:
    def __init__(self, token: str, streams: frozenset[str] = frozenset({"outbound", "broadcast"})):
        self.token = token
        self.streams = streams
        self.inactive: set[str] = set()  # recipients Postmark has marked inactive
        self.fail_with: Reply | None = None
        self.delay_seconds = 0.0  # how long each batch takes, to see batches overlap
        self.accepted: list[dict[str, Any]] = []  # every message answered with ErrorCode 0
        self.message_ids: dict[str, str] = {}  # the MessageID given, by recipient
        self.batch_sizes: list[int] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.inactive.clear()
        self.fail_with = None
        self.delay_seconds = 0.0
        self.accepted.clear()
        self.message_ids.clear()
        self.batch_sizes.clear()
        self.max_in_flight = 0

    def __call__(self, request: Request) -> Reply:
        if request.headers.get("x-postmark-server-token") != self.token:
            return _error(401, 10, "Request does not contain a valid Server token.")
        if request.headers.get("accept") != "application/json":
            return _error(422, 409, "JSON data required: Accept must be application/json.")
        if self.fail_with is not None:
            return self.fail_with
        if request.method == "GET" and request.path == "/server":
            return Reply(200, {"ID": 1, "Name": "Herald test", "ApiTokens": [self.token]})
        if request.method == "POST" and request.path == "/email/batch":
            if request.headers.get("content-type") != "application/json":
                return _error(422, 409, "JSON data required: Content-Type must be JSON.")
            return self._batch(request)
        return Reply(404, b"")

    def _batch(self, request: Request) -> Reply:
        try:
            messages = request.json()
        except ValueError:
            return _error(422, 402, "Invalid JSON.")
        if not isinstance(messages, list) or not messages:
            return _error(422, 402, "The batch must be a JSON array of messages.")
        if len(messages) > MAX_BATCH:
            return _error(422, 410, f"Too many batch messages ({len(messages)}).")
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self.batch_sizes.append(len(messages))
        try:
            time.sleep(self.delay_seconds)
            return Reply(200, [self._result(message) for message in messages])
        finally:
            with self._lock:
                self._in_flight -= 1

    def _result(self, message: Any) -> dict[str, Any]:
        problems = _problems(message, self.streams)
        to = message.get("To", "") if isinstance(message, dict) else ""
        if problems:
            return {"ErrorCode": 300, "Message": "Invalid email request: " + "; ".join(problems)}
        if to in self.inactive:
            return {
                "ErrorCode": 406,
                "Message": "You tried to send to recipient(s) that have been marked as inactive.",
                "To": to,
            }
        message_id = str(uuid.uuid4())
        with self._lock:
            self.accepted.append(message)
            self.message_ids[to] = message_id
        return {
            "ErrorCode": 0,
            "Message": "OK",
            "MessageID": message_id,
            "SubmittedAt": datetime.now(UTC).isoformat(),
            "To": to,
        }


def _problems(message: Any, streams: frozenset[str]) -> list[str]:
    if not isinstance(message, dict):
        return ["a message must be a JSON object"]
    problems = [f"unknown field {name!r}" for name in message if name not in MESSAGE_FIELDS]
    for name in ("From", "To"):
        if not isinstance(message.get(name), str) or not message[name].strip():
            problems.append(f"{name} is required")
    if not (message.get("HtmlBody") or message.get("TextBody")):
        problems.append("HtmlBody or TextBody is required")
    if message.get("MessageStream", "outbound") not in streams:
        problems.append(f"unknown MessageStream {message.get('MessageStream')!r}")
    if "TrackLinks" in message and message["TrackLinks"] not in TRACK_LINKS:
        problems.append(f"TrackLinks must be one of {sorted(TRACK_LINKS)}")
    if "TrackOpens" in message and not isinstance(message["TrackOpens"], bool):
        problems.append("TrackOpens must be a boolean")
    headers = message.get("Headers", [])
    if not isinstance(headers, list) or not all(
        isinstance(h, dict)
        and set(h) == {"Name", "Value"}
        and all(isinstance(v, str) for v in h.values())
        for h in headers
    ):
        problems.append("Headers must be a list of {Name, Value} strings")
    metadata = message.get("Metadata", {})
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_FIELDS:
        problems.append(f"Metadata must be an object of at most {MAX_METADATA_FIELDS} fields")
    elif not all(
        isinstance(k, str)
        and isinstance(v, str)
        and len(k) <= MAX_METADATA_NAME
        and len(v) <= MAX_METADATA_VALUE
        for k, v in metadata.items()
    ):
        problems.append("Metadata names and values must be short strings")
    return problems
