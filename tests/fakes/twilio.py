"""A fake Twilio Messages API on a real local HTTP server, strict about what it accepts.

It checks what Twilio checks (basic auth with the account's token or an API key, the account
SID in the URL, a valid 'To') and, more strictly than Twilio, that the form holds only Twilio's
documented Create Message fields, one value each, with exactly one sender and one content.
Everything it refuses is also listed in `refusals`, so a test can see why. Accepted messages
are answered 201 with a Twilio-shaped message and kept in `accepted`.
"""

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from twilio.request_validator import RequestValidator

from herald.delivery.sms_segments import sms_segments
from tests.fakes.http_server import FakeServer, Reply, Request, fake_server

API = "/2010-04-01/Accounts"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# The documented parameters of Create Message; Twilio ignores others, the fake refuses them.
CREATE_MESSAGE_FIELDS = frozenset(
    {
        "To", "From", "MessagingServiceSid", "Body", "MediaUrl", "ContentSid",
        "ContentVariables", "StatusCallback", "ApplicationSid", "MaxPrice", "ProvideFeedback",
        "Attempt", "ValidityPeriod", "ForceDelivery", "ContentRetention", "AddressRetention",
        "SmartEncoded", "PersistentAction", "ShortenUrls", "ScheduleType", "SendAt",
        "SendAsMms", "RiskCheck",
    }
)  # fmt: skip


def twilio_error(status: int, code: int | None, message: str, **headers: str) -> Reply:
    """An error answered the way Twilio's 2010 API shapes it."""
    more_info = f"https://www.twilio.com/docs/errors/{code}" if code else None
    body = {"code": code, "message": message, "more_info": more_info, "status": status}
    return Reply(status, body, headers)


def too_many_requests(retry_after: str = "1") -> Reply:
    return twilio_error(429, 20429, "Too Many Requests", **{"Retry-After": retry_after})


def service_unavailable() -> Reply:
    return twilio_error(503, None, "Service Unavailable")


def invalid_to(number: str = "+15005550001") -> Reply:
    return twilio_error(400, 21211, f"The 'To' number {number} is not a valid phone number.")


def unsubscribed_recipient() -> Reply:
    return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")


@dataclass
class FakeTwilio:
    account_sid: str
    auth_token: str | None = None
    api_key: tuple[str, str] | None = None  # (SK..., secret)
    latency: float = 0.0  # seconds each message request takes, to overlap concurrent ones
    account_status: str = "active"
    num_segments: str | None = None  # answer this instead of counting the body's segments
    scripted: list[Reply] = field(default_factory=list)  # answered first, once each
    accepted: list[dict[str, str]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    max_in_flight: int = 0
    server: FakeServer | None = None
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def requests(self) -> list[Request]:
        assert self.server is not None
        return self.server.requests

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.scripted.extend(replies)

    def handle(self, request: Request) -> Reply:
        account = f"{API}/{self.account_sid}"
        if request.method == "GET" and request.path.startswith(f"{API}/"):
            return self._authenticated(request) or self._fetch_account(request, account)
        if request.method == "POST" and request.path.endswith("/Messages.json"):
            with self._lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            try:
                time.sleep(self.latency)
                refused = self._authenticated(request) or self._url_account(request, account)
                return refused or self._create_message(request)
            finally:
                with self._lock:
                    self._in_flight -= 1
        return self._refuse(404, 20404, f"no such resource: {request.method} {request.path}")

    def _refuse(self, status: int, code: int | None, message: str) -> Reply:
        with self._lock:
            self.refusals.append(message)
        return twilio_error(status, code, message)

    def _authenticated(self, request: Request) -> Reply | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            user = password = ""
        valid = []
        if self.auth_token is not None:
            valid.append((self.account_sid, self.auth_token))
        if self.api_key is not None:
            valid.append(self.api_key)
        if scheme == "Basic" and (user, password) in valid:
            return None
        return self._refuse(401, 20003, f"Authenticate: credentials for {user!r} refused")

    def _url_account(self, request: Request, account: str) -> Reply | None:
        if request.path == f"{account}/Messages.json":
            return None
        return self._refuse(404, 20404, f"The requested resource {request.path} was not found")

    def _fetch_account(self, request: Request, account: str) -> Reply:
        if request.path != f"{account}.json":
            return self._refuse(404, 20404, f"The requested resource {request.path} was not found")
        return Reply(200, {
            "sid": self.account_sid, "friendly_name": "Herald test", "status": self.account_status,
            "type": "Full", "owner_account_sid": self.account_sid, "uri": f"{account}.json",
        })  # fmt: skip

    def _create_message(self, request: Request) -> Reply:
        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            return self._refuse(400, None, "fake Twilio: the body must be form-encoded")
        try:
            fields = request.form()
        except ValueError:
            return self._refuse(400, None, "fake Twilio: the form does not parse")
        problem = _form_problem(fields)
        if problem:
            return self._refuse(400, None, f"fake Twilio: {problem}")
        form = {name: values[0] for name, values in fields.items()}
        to = form["To"]
        if not E164.match(to.removeprefix("whatsapp:")):
            return self._refuse(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
            self.accepted.append(form)
        return Reply(201, self._message(form))

    def _message(self, form: dict[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        via_service = "From" not in form
        if self.num_segments is not None:
            segments = self.num_segments
        elif via_service:
            segments = "0"  # a Messaging Service has not picked the sender (nor counted) yet
        elif form["To"].startswith("whatsapp:"):
            segments = "1"
        else:
            segments = str(sms_segments(form["Body"]).segments)
        now = formatdate(usegmt=True)
        return {
            "account_sid": self.account_sid, "api_version": "2010-04-01",
            "body": form.get("Body", ""), "date_created": now, "date_sent": None,
            "date_updated": now, "direction": "outbound-api", "error_code": None,
            "error_message": None, "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0",
            "num_segments": segments, "price": None, "price_unit": "USD", "sid": sid,
            "status": "accepted" if via_service else "queued", "to": form["To"],
            "uri": f"{API}/{self.account_sid}/Messages/{sid}.json",
        }  # fmt: skip


def _form_problem(fields: dict[str, list[str]]) -> str | None:
    unknown = sorted(set(fields) - CREATE_MESSAGE_FIELDS)
    if unknown:
        return f"not Create Message fields: {unknown}"
    repeated = sorted(name for name, values in fields.items() if len(values) > 1)
    if repeated:
        return f"fields sent more than once: {repeated}"
    if "To" not in fields:
        return "To is required"
    if ("From" in fields) == ("MessagingServiceSid" in fields):
        return "exactly one of From and MessagingServiceSid is required"
    if ("Body" in fields) == ("ContentSid" in fields):
        return "exactly one of Body and ContentSid is required"
    if "ContentVariables" in fields:
        if "ContentSid" not in fields:
            return "ContentVariables without ContentSid"
        try:
            variables = json.loads(fields["ContentVariables"][0])
        except ValueError:
            return "ContentVariables is not JSON"
        if not isinstance(variables, dict):
            return "ContentVariables is not a JSON object"
    to_whatsapp = fields["To"][0].startswith("whatsapp:")
    if "From" in fields and fields["From"][0].startswith("whatsapp:") != to_whatsapp:
        return "To and From must both be whatsapp: addresses, or neither"
    return None


@contextmanager
def fake_twilio(
    account_sid: str,
    *,
    auth_token: str | None = None,
    api_key: tuple[str, str] | None = None,
    latency: float = 0.0,
) -> Iterator[FakeTwilio]:
    fake = FakeTwilio(account_sid, auth_token=auth_token, api_key=api_key, latency=latency)
    with fake_server(fake.handle) as server:
        fake.server = server
        yield fake


def sign_callback(url: str, params: dict[str, str], auth_token: str) -> str:
    """The X-Twilio-Signature Twilio puts on a status callback, by Twilio's own validator."""
    return str(RequestValidator(auth_token).compute_signature(url, params))
