"""SMS and WhatsApp through Twilio's Messages API (2010-04-01), one message per request.

Twilio has no batch send, so `send_many` is the base class's: `limits.concurrency` requests in
flight. Twilio queues what a sender cannot pass on at once (up to hours), so going over the
sender's rate delays messages rather than failing them; the send path's rate keeps campaigns
from building that queue. The Messages API takes no idempotency key: a timeout after Twilio
received the request can, when retried, send the message twice.
"""

import json
from typing import Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderError,
    ProviderLimits,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
)
from herald.delivery.providers.http_replies import (
    HttpProvider,
    request_failed,
    retry_after_seconds,
)
from herald.delivery.sms_segments import sms_segments
from models.enums import Channel

API_VERSION = "2010-04-01"
E164 = r"^\+[1-9]\d{1,14}$"

# Twilio error codes that say something about this one message, not the account.
INVALID_ADDRESS_CODES = frozenset({21211, 21614})  # 'To' is not a valid (mobile) number
UNSUBSCRIBED_CODE = 21610  # the recipient replied STOP to this sender
AUTHENTICATE_CODE = 20003  # wrong account SID, auth token or API key


class TwilioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    # Exactly one way to authenticate: the account's auth token, or an API key (revocable alone).
    auth_token: SecretStr | None = None
    api_key_sid: str | None = Field(default=None, pattern=r"^SK[0-9a-fA-F]{32}$")
    api_key_secret: SecretStr | None = None
    # SMS from one number, or from a Messaging Service's sender pool (not both).
    from_number: str | None = Field(default=None, pattern=E164)
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    whatsapp_from: str | None = Field(default=None, pattern=E164)  # the WhatsApp sender number
    status_callback_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    base_url: str = "https://api.twilio.com"
    timeout_seconds: float = Field(default=10.0, gt=0)
    # A long code sends about 1 segment per second (Twilio queues the excess); toll-free numbers
    # and short codes are allowed more (tens to 100+ per second): raise both for those senders.
    concurrency: int = Field(default=4, ge=1)
    per_second: float | None = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def one_way_to_authenticate_and_a_sender(self) -> Self:
        token = self.auth_token is not None and bool(self.auth_token.get_secret_value())
        key_sid = self.api_key_sid is not None
        key_secret = self.api_key_secret is not None and bool(
            self.api_key_secret.get_secret_value()
        )
        if token and (key_sid or key_secret):
            raise ValueError(
                "auth_token and api_key_sid / api_key_secret are both set: choose one way"
            )
        if key_sid != key_secret:
            missing = "api_key_secret" if key_sid else "api_key_sid"
            raise ValueError(f"{missing} is missing: an API key needs api_key_sid and its secret")
        if not token and not key_sid:
            raise ValueError("set auth_token, or api_key_sid and api_key_secret")
        if self.from_number and self.messaging_service_sid:
            raise ValueError(
                "from_number and messaging_service_sid are both set: choose one SMS sender"
            )
        if not (self.from_number or self.messaging_service_sid or self.whatsapp_from):
            raise ValueError(
                "no sender: set from_number or messaging_service_sid (SMS), whatsapp_from"
            )
        return self

    def credentials(self) -> tuple[str, str]:
        """Basic-auth user and password; the URLs name the account either way."""
        if self.api_key_sid is not None and self.api_key_secret is not None:
            return self.api_key_sid, self.api_key_secret.get_secret_value()
        assert self.auth_token is not None  # the validator guarantees one of the two
        return self.account_sid, self.auth_token.get_secret_value()

    def auth_name(self) -> str:
        return "API key" if self.api_key_sid else "auth token"


class TwilioProvider(HttpProvider):
    name = "twilio"

    def __init__(self, config: TwilioConfig):
        self.config = config
        self.limits = ProviderLimits(concurrency=config.concurrency, per_second=config.per_second)

    def new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.config.base_url.rstrip("/"),
            auth=httpx.BasicAuth(*self.config.credentials()),
            timeout=self.config.timeout_seconds,
            headers={"Accept": "application/json"},
        )

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        form = self.message_form(message)
        path = f"/{API_VERSION}/Accounts/{self.config.account_sid}/Messages.json"
        response = await self._request("POST", path, data=form)
        if response.status_code >= 300:
            raise _classify(response)
        reply = _json_object(response)
        sid = reply.get("sid")
        if not isinstance(sid, str) or not sid:
            # A success without a message SID is not Twilio answering: base_url is wrong.
            raise ProviderMisconfigured(
                f"{self.config.base_url} answered {response.status_code} without a message sid"
            )
        return SendReceipt(provider_message_id=sid, segments=_segments(reply, message))

    def message_form(self, message: OutgoingMessage) -> dict[str, str]:
        """The Create Message fields, named as Twilio documents them."""
        config = self.config
        if message.channel == Channel.sms:
            form = {"To": message.to_address, "Body": message.body}
            sender = message.sender or config.from_number
        elif message.channel == Channel.whatsapp:
            form = {"To": _whatsapp(message.to_address)}
            sender = message.sender or config.whatsapp_from
            sender = _whatsapp(sender) if sender else None
            # Business-initiated WhatsApp must be an approved template; the API checks earlier.
            if message.template is None:
                raise ProviderRejected(
                    "template_required",
                    "a business-initiated WhatsApp message needs an approved content template",
                )
            form["ContentSid"] = message.template.content_sid
            form["ContentVariables"] = json.dumps(message.template.variables)
        else:
            raise ProviderMisconfigured(f"Twilio sends sms and whatsapp, not {message.channel}")
        if sender:
            form["From"] = sender
        elif config.messaging_service_sid:
            form["MessagingServiceSid"] = config.messaging_service_sid
        else:
            field = "whatsapp_from" if message.channel == Channel.whatsapp else "from_number"
            raise ProviderMisconfigured(f"no {message.channel} sender: set {field}")
        if config.status_callback_url:
            form["StatusCallback"] = config.status_callback_url
        return form

    async def check(self) -> None:
        sid = self.config.account_sid
        response = await self._request("GET", f"/{API_VERSION}/Accounts/{sid}.json")
        if response.status_code in (401, 403):
            code, detail = _twilio_error(response)
            raise ProviderMisconfigured(
                f"Twilio refused the account SID / {self.config.auth_name()} for {sid}"
                f" ({response.status_code}, code {code}: {detail})"
            )
        if response.status_code == 404:
            raise ProviderMisconfigured(f"Twilio knows no account {sid} for these credentials")
        if response.status_code >= 300:
            raise _classify(response)
        account = _json_object(response)
        if account.get("sid") != sid:
            raise ProviderMisconfigured(f"{self.config.base_url} did not answer like Twilio")
        if account.get("status") != "active":
            raise ProviderMisconfigured(f"Twilio account {sid} is {account.get('status')}")

    async def _request(
        self, method: str, path: str, data: dict[str, str] | None = None
    ) -> httpx.Response:
        try:
            return await self._http().request(method, path, data=data)
        except httpx.TimeoutException as exc:
            raise request_failed(
                f"Twilio did not answer within {self.config.timeout_seconds}s", exc
            ) from exc
        except httpx.TransportError as exc:
            raise request_failed("could not reach Twilio", exc) from exc


def _whatsapp(address: str) -> str:
    return address if address.startswith("whatsapp:") else f"whatsapp:{address}"


def _segments(reply: dict[str, object], message: OutgoingMessage) -> int | None:
    # A Messaging Service answers num_segments "0" until it has picked the sender: count them.
    try:
        billed = int(str(reply.get("num_segments")))
    except ValueError:
        billed = 0
    if billed > 0:
        return billed
    return sms_segments(message.body).segments if message.channel == Channel.sms else None


def _classify(response: httpx.Response) -> ProviderError:
    """Twilio's error answer as one of the three provider errors."""
    status = response.status_code
    code, detail = _twilio_error(response)
    said = f"Twilio {status}, code {code}: {detail}"
    if status == 429 or status >= 500:
        wait = retry_after_seconds(response.headers.get("retry-after"))
        return ProviderUnavailable(said, retry_after=wait)
    if status in (401, 403) or code == AUTHENTICATE_CODE:
        return ProviderMisconfigured(f"Twilio refused the credentials ({said})")
    provider_code = str(code) if code is not None else None
    if code in INVALID_ADDRESS_CODES:
        return ProviderRejected("invalid_address", said, provider_code=provider_code)
    if code == UNSUBSCRIBED_CODE:
        return ProviderRejected("recipient_unsubscribed", said, provider_code=provider_code)
    if status == 408:
        return ProviderUnavailable(said)
    return ProviderRejected("provider_rejected", said, provider_code=provider_code)


def _twilio_error(response: httpx.Response) -> tuple[int | None, str]:
    """(code, message) from Twilio's error body {code, message, more_info, status}."""
    body = _json_object(response)
    code = body.get("code")
    message = body.get("message")
    more_info = body.get("more_info")
    text = str(message) if message else response.text[:200] or response.reason_phrase
    if more_info:
        text = f"{text} ({more_info})"
    return (code if isinstance(code, int) else None), text


def _json_object(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
