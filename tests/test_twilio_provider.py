"""The Twilio provider against a fake Twilio that checks auth, URL and every form field."""

import asyncio
import base64
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderLimits,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
    WhatsAppTemplate,
)
from herald.delivery.providers.twilio import TwilioConfig, TwilioProvider
from models.enums import Channel
from tests.fakes.http_server import Reply, fake_server
from tests.fakes.twilio import (
    FakeTwilio,
    fake_twilio,
    invalid_to,
    service_unavailable,
    sign_callback,
    too_many_requests,
    twilio_error,
    unsubscribed_recipient,
)

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "auth-token-secret"
API_KEY = ("SK" + "fedcba9876543210" * 2, "api-key-secret")
SERVICE = "MG" + "00112233445566778899aabbccddeeff"
CONTENT = "HX" + "ffeeddccbbaa99887766554433221100"
SENDER = "+15017122661"
WHATSAPP_SENDER = "+14155238886"
RECIPIENT = "+31612345678"
SDK_HOST = "https://api.twilio.com"
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with fake_twilio(ACCOUNT, auth_token=TOKEN, api_key=API_KEY) as fake:
        yield fake


def config(fake: FakeTwilio, **overrides: Any) -> TwilioConfig:
    values = {"account_sid": ACCOUNT, "auth_token": TOKEN, "from_number": SENDER}
    return TwilioConfig(**(values | {"base_url": fake.url} | overrides))


@asynccontextmanager
async def twilio(settings: TwilioConfig) -> AsyncIterator[TwilioProvider]:
    provider = TwilioProvider(settings)
    try:
        yield provider
    finally:
        await provider.aclose()


def sms(body: str = "Your order has shipped", **fields: Any) -> OutgoingMessage:
    return OutgoingMessage(
        delivery_id="delivery-1",
        idempotency_key="run-1/step-1/profile-1",
        profile_id="profile-1",
        channel=Channel.sms,
        to_address=RECIPIENT,
        subject=None,
        body=body,
        **fields,
    )


def whatsapp(template: WhatsAppTemplate | None) -> OutgoingMessage:
    return replace(sms("Hi Ada"), channel=Channel.whatsapp, template=template)


def basic_auth(fake: FakeTwilio, index: int = 0) -> tuple[str, str]:
    scheme, _, encoded = fake.requests[index].headers["authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return user, password


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def send(settings: TwilioConfig, message: OutgoingMessage) -> SendReceipt:
    async with twilio(settings) as provider:
        return await provider.send(message)


# What goes on the wire


async def test_sms_from_a_number_posts_exactly_twilios_fields_with_the_auth_token(
    fake: FakeTwilio,
) -> None:
    receipt = await send(config(fake), sms())

    assert fake.accepted == [{"To": RECIPIENT, "From": SENDER, "Body": "Your order has shipped"}]
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", MESSAGES)
    assert basic_auth(fake) == (ACCOUNT, TOKEN)
    assert re.fullmatch(r"SM[0-9a-f]{32}", receipt.provider_message_id)
    assert receipt.segments == 1


async def test_sms_through_a_messaging_service_sends_its_sid_and_counts_segments_itself(
    fake: FakeTwilio,
) -> None:
    settings = config(fake, from_number=None, messaging_service_sid=SERVICE)

    receipt = await send(settings, sms("a" * 161))

    assert fake.accepted == [{"To": RECIPIENT, "MessagingServiceSid": SERVICE, "Body": "a" * 161}]
    assert receipt.segments == 2  # Twilio said "0" (no sender picked yet): counted here


async def test_api_key_auth_sends_the_key_but_keeps_the_account_sid_in_the_url(
    fake: FakeTwilio,
) -> None:
    settings = config(fake, auth_token=None, api_key_sid=API_KEY[0], api_key_secret=API_KEY[1])

    await send(settings, sms())

    assert basic_auth(fake) == API_KEY
    assert fake.requests[0].path == MESSAGES
    assert len(fake.accepted) == 1


async def test_status_callback_is_sent_when_configured(fake: FakeTwilio) -> None:
    callback = "https://herald.example.com/v1/webhooks/twilio/status"

    await send(config(fake, status_callback_url=callback), sms())

    assert fake.accepted[0]["StatusCallback"] == callback


async def test_the_messages_own_sender_replaces_the_default_number(fake: FakeTwilio) -> None:
    await send(config(fake), sms(sender="+15005550006"))

    assert fake.accepted[0]["From"] == "+15005550006"


async def test_the_receipt_carries_the_segments_twilio_counted(fake: FakeTwilio) -> None:
    fake.num_segments = "3"

    receipt = await send(config(fake), sms("short"))

    assert receipt.segments == 3


async def test_whatsapp_sends_the_approved_template_with_whatsapp_addresses(
    fake: FakeTwilio,
) -> None:
    template = WhatsAppTemplate(CONTENT, {"1": "Ada", "2": "Friday 10:00"})

    receipt = await send(config(fake, whatsapp_from=WHATSAPP_SENDER), whatsapp(template))

    [form] = fake.accepted
    assert set(form) == {"To", "From", "ContentSid", "ContentVariables"}
    assert form["To"] == f"whatsapp:{RECIPIENT}"
    assert form["From"] == f"whatsapp:{WHATSAPP_SENDER}"
    assert form["ContentSid"] == CONTENT
    assert json.loads(form["ContentVariables"]) == {"1": "Ada", "2": "Friday 10:00"}
    assert receipt.segments == 1


async def test_whatsapp_without_a_template_is_refused_before_calling_twilio(
    fake: FakeTwilio,
) -> None:
    with pytest.raises(ProviderRejected) as refused:
        await send(config(fake, whatsapp_from=WHATSAPP_SENDER), whatsapp(None))

    assert refused.value.reason == "template_required"
    assert fake.requests == []


async def test_a_channel_without_its_sender_is_misconfigured(fake: FakeTwilio) -> None:
    settings = config(fake, from_number=None, whatsapp_from=WHATSAPP_SENDER)

    with pytest.raises(ProviderMisconfigured, match="from_number"):
        await send(settings, sms())
    assert fake.requests == []


async def test_email_is_not_a_twilio_channel(fake: FakeTwilio) -> None:
    with pytest.raises(ProviderMisconfigured, match="email"):
        await send(config(fake), replace(sms(), channel=Channel.email))


# How Twilio's answers are classified


async def test_an_invalid_to_number_is_rejected_as_an_invalid_address(fake: FakeTwilio) -> None:
    with pytest.raises(ProviderRejected) as refused:
        await send(config(fake), replace(sms(), to_address="0612345678"))

    assert (refused.value.reason, refused.value.provider_code) == ("invalid_address", "21211")
    assert fake.accepted == []


async def test_a_number_that_cannot_receive_sms_is_an_invalid_address(fake: FakeTwilio) -> None:
    fake.script(twilio_error(400, 21614, "'To' number is not a valid mobile number"))

    with pytest.raises(ProviderRejected) as refused:
        await send(config(fake), sms())

    assert (refused.value.reason, refused.value.provider_code) == ("invalid_address", "21614")


async def test_a_recipient_who_replied_stop_is_unsubscribed(fake: FakeTwilio) -> None:
    fake.script(unsubscribed_recipient())

    with pytest.raises(ProviderRejected) as refused:
        await send(config(fake), sms())

    assert refused.value.reason == "recipient_unsubscribed"
    assert refused.value.provider_code == "21610"


async def test_any_other_400_is_rejected_with_twilios_code(fake: FakeTwilio) -> None:
    fake.script(twilio_error(400, 21617, "The concatenated message body exceeds 1600 characters"))

    with pytest.raises(ProviderRejected) as refused:
        await send(config(fake), sms())

    assert (refused.value.reason, refused.value.provider_code) == ("provider_rejected", "21617")
    assert "1600 characters" in refused.value.detail


async def test_a_wrong_auth_token_is_misconfigured(fake: FakeTwilio) -> None:
    with pytest.raises(ProviderMisconfigured, match="20003"):
        await send(config(fake, auth_token="not-the-token"), sms())

    assert fake.accepted == []


async def test_a_403_is_misconfigured(fake: FakeTwilio) -> None:
    fake.script(twilio_error(403, 20003, "Permission denied"))

    with pytest.raises(ProviderMisconfigured):
        await send(config(fake), sms())


async def test_429_is_unavailable_for_the_seconds_twilio_asks(fake: FakeTwilio) -> None:
    fake.script(too_many_requests(retry_after="1"))

    async with twilio(config(fake)) as provider:
        with pytest.raises(ProviderUnavailable) as busy:
            await provider.send(sms())
        assert busy.value.retry_after == 1
        await provider.send(sms())  # the provider does not retry; the send path does

    assert len(fake.requests) == 2
    assert len(fake.accepted) == 1


async def test_503_is_unavailable(fake: FakeTwilio) -> None:
    fake.script(service_unavailable())

    with pytest.raises(ProviderUnavailable) as busy:
        await send(config(fake), sms())

    assert busy.value.retry_after is None
    assert fake.accepted == []


async def test_a_refused_connection_is_unavailable() -> None:
    settings = TwilioConfig(
        account_sid=ACCOUNT, auth_token=TOKEN, from_number=SENDER, base_url=closed_port_url()
    )

    with pytest.raises(ProviderUnavailable, match="could not reach Twilio"):
        await send(settings, sms())


async def test_a_slow_answer_is_unavailable(fake: FakeTwilio) -> None:
    fake.latency = 0.3

    with pytest.raises(ProviderUnavailable, match="did not answer"):
        await send(config(fake, timeout_seconds=0.05), sms())


# check()


@pytest.mark.parametrize(
    "auth",
    [{}, {"auth_token": None, "api_key_sid": API_KEY[0], "api_key_secret": API_KEY[1]}],
    ids=["auth_token", "api_key"],
)
async def test_check_fetches_the_account_with_either_credential(
    fake: FakeTwilio, auth: dict[str, Any]
) -> None:
    async with twilio(config(fake, **auth)) as provider:
        await provider.check()

    [request] = fake.requests
    assert (request.method, request.path) == ("GET", f"/2010-04-01/Accounts/{ACCOUNT}.json")
    assert fake.refusals == []


@pytest.mark.parametrize(
    ("auth", "named"),
    [
        ({"auth_token": "wrong"}, "account SID / auth token"),
        ({"auth_token": None, "api_key_sid": API_KEY[0], "api_key_secret": "wrong"}, "API key"),
    ],
    ids=["auth_token", "api_key"],
)
async def test_check_names_refused_credentials(
    fake: FakeTwilio, auth: dict[str, Any], named: str
) -> None:
    async with twilio(config(fake, **auth)) as provider:
        with pytest.raises(ProviderMisconfigured, match=named):
            await provider.check()


async def test_check_refuses_a_base_url_that_is_not_twilio() -> None:
    with fake_server(lambda request: Reply(200, "<html>a proxy</html>")) as other:
        settings = TwilioConfig(
            account_sid=ACCOUNT, auth_token=TOKEN, from_number=SENDER, base_url=other.url
        )
        async with twilio(settings) as provider:
            with pytest.raises(ProviderMisconfigured, match="did not answer like Twilio"):
                await provider.check()
            with pytest.raises(ProviderMisconfigured, match="without a message sid"):
                await provider.send(sms())


async def test_check_refuses_a_suspended_account(fake: FakeTwilio) -> None:
    fake.account_status = "suspended"

    async with twilio(config(fake)) as provider:
        with pytest.raises(ProviderMisconfigured, match="suspended"):
            await provider.check()


# Config


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"account_sid": "AC123"}, "account_sid"),
        ({"api_key_sid": API_KEY[0], "api_key_secret": API_KEY[1]}, "auth_token"),
        ({"auth_token": None}, "auth_token"),
        ({"auth_token": None, "api_key_sid": API_KEY[0]}, "api_key_secret"),
        ({"auth_token": None, "api_key_secret": "secret"}, "api_key_sid"),
        ({"auth_token": None, "api_key_sid": ACCOUNT, "api_key_secret": "s"}, "api_key_sid"),
        ({"from_number": "0612345678"}, "from_number"),
        ({"whatsapp_from": "whatsapp:+14155238886"}, "whatsapp_from"),
        ({"messaging_service_sid": SERVICE}, "messaging_service_sid"),
        ({"from_number": None}, "from_number"),
        ({"status_callback_url": "not a url"}, "status_callback_url"),
        ({"concurrency": 0}, "concurrency"),
        ({"authtoken": TOKEN}, "authtoken"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, Any], named: str) -> None:
    values = {"account_sid": ACCOUNT, "auth_token": TOKEN, "from_number": SENDER} | fields

    with pytest.raises(ValidationError, match=named):
        TwilioConfig(**values)


def test_config_defaults_to_a_long_codes_pace_and_hides_secrets() -> None:
    settings = TwilioConfig(account_sid=ACCOUNT, auth_token=TOKEN, from_number=SENDER)

    assert TwilioProvider(settings).limits == ProviderLimits(concurrency=4, per_second=1.0)
    assert settings.base_url == "https://api.twilio.com"
    assert TOKEN not in repr(settings)


# Concurrency


async def test_send_many_keeps_at_most_concurrency_requests_in_flight() -> None:
    with fake_twilio(ACCOUNT, auth_token=TOKEN, latency=0.1) as fake:
        messages = [replace(sms(f"message {i}"), delivery_id=f"d{i}") for i in range(20)]

        async with twilio(config(fake, concurrency=4)) as provider:
            outcomes = await provider.send_many(messages)

    assert all(isinstance(outcome, SendReceipt) for outcome in outcomes)
    assert sorted(form["Body"] for form in fake.accepted) == sorted(m.body for m in messages)
    assert len({o.provider_message_id for o in outcomes if isinstance(o, SendReceipt)}) == 20
    assert fake.max_in_flight == 4


async def test_concurrent_send_manys_share_the_providers_concurrency() -> None:
    # Two pages (or a page and a test send) on one worker: four in flight between them.
    with fake_twilio(ACCOUNT, auth_token=TOKEN, latency=0.1) as fake:
        batches = [
            [replace(sms(f"{b}-{i}"), delivery_id=f"d{b}-{i}") for i in range(8)] for b in "ab"
        ]
        async with twilio(config(fake, concurrency=4)) as provider:
            first, second = await asyncio.gather(*(provider.send_many(b) for b in batches))

    assert all(isinstance(outcome, SendReceipt) for outcome in first + second)
    assert fake.max_in_flight == 4


async def test_send_many_answers_each_messages_error_in_its_place(fake: FakeTwilio) -> None:
    fake.script(invalid_to())

    async with twilio(config(fake, concurrency=1)) as provider:
        first, second = await provider.send_many([sms("one"), sms("two")])

    assert isinstance(first, ProviderRejected) and first.reason == "invalid_address"
    assert isinstance(second, SendReceipt)
    assert [form["Body"] for form in fake.accepted] == ["two"]


# The fake itself can fail


class ChattyProvider(TwilioProvider):
    """Adds a field Twilio does not document, as a careless provider might."""

    def message_form(self, message: OutgoingMessage) -> dict[str, str]:
        return super().message_form(message) | {"Channel": "sms"}


async def test_the_fake_refuses_a_field_twilio_does_not_document(fake: FakeTwilio) -> None:
    provider = ChattyProvider(config(fake))
    try:
        with pytest.raises(ProviderRejected):
            await provider.send(sms())
    finally:
        await provider.aclose()

    assert fake.refusals == ["fake Twilio: not Create Message fields: ['Channel']"]
    assert fake.accepted == []


@pytest.mark.parametrize(
    ("form", "refusal"),
    [
        ({"To": RECIPIENT, "Body": "hi"}, "exactly one of From and MessagingServiceSid"),
        (
            {"To": RECIPIENT, "From": SENDER, "MessagingServiceSid": SERVICE, "Body": "hi"},
            "exactly one of From and MessagingServiceSid",
        ),
        ({"To": RECIPIENT, "From": SENDER}, "exactly one of Body and ContentSid"),
        ({"From": SENDER, "Body": "hi"}, "To is required"),
        (
            {"To": f"whatsapp:{RECIPIENT}", "From": SENDER, "ContentSid": CONTENT},
            "both be whatsapp",
        ),
        (
            {"To": RECIPIENT, "From": SENDER, "ContentSid": CONTENT, "ContentVariables": "[1]"},
            "not a JSON object",
        ),
    ],
)
def test_the_fake_refuses_a_malformed_form(
    fake: FakeTwilio, form: dict[str, str], refusal: str
) -> None:
    url = fake.url + MESSAGES

    response = httpx.post(url, data=form, auth=(ACCOUNT, TOKEN))

    assert response.status_code == 400
    assert refusal in fake.refusals[0]
    assert fake.accepted == []


@pytest.mark.parametrize(
    ("auth", "account"),
    [
        ((ACCOUNT, "wrong"), ACCOUNT),
        ((API_KEY[0], TOKEN), ACCOUNT),  # an API key SID with the account's token
        ((ACCOUNT, TOKEN), "AC" + "f" * 32),  # right credentials, another account's URL
    ],
)
def test_the_fake_refuses_wrong_auth_or_another_account(
    fake: FakeTwilio, auth: tuple[str, str], account: str
) -> None:
    url = f"{fake.url}/2010-04-01/Accounts/{account}/Messages.json"

    response = httpx.post(url, data={"To": RECIPIENT, "From": SENDER, "Body": "hi"}, auth=auth)

    assert response.status_code in (401, 404)
    assert response.json()["code"] in (20003, 20404)
    assert len(fake.refusals) == 1
    assert fake.accepted == []


def test_the_fake_refuses_json_instead_of_a_form(fake: FakeTwilio) -> None:
    url = fake.url + MESSAGES

    response = httpx.post(
        url, json={"To": RECIPIENT, "From": SENDER, "Body": "hi"}, auth=(ACCOUNT, TOKEN)
    )

    assert response.status_code == 400
    assert fake.refusals == ["fake Twilio: the body must be form-encoded"]


# The fake against Twilio's own SDK


class SdkToFake(TwilioHttpClient):
    """The official SDK's HTTP client, sending to the fake instead of Twilio's host."""

    def __init__(self, base_url: str):
        super().__init__()
        self.base_url = base_url

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        return super().request(method, url.replace(SDK_HOST, self.base_url), *args, **kwargs)


def test_the_fake_accepts_what_twilios_sdk_sends_and_herald_sends_the_same(
    fake: FakeTwilio,
) -> None:
    sdk = Client(API_KEY[0], API_KEY[1], ACCOUNT, http_client=SdkToFake(fake.url))
    callback = "https://herald.example.com/v1/webhooks/twilio/status"

    sent = sdk.messages.create(to=RECIPIENT, from_=SENDER, body="hi", status_callback=callback)
    sdk.messages.create(
        to=f"whatsapp:{RECIPIENT}",
        from_=f"whatsapp:{WHATSAPP_SENDER}",
        content_sid=CONTENT,
        content_variables=json.dumps({"1": "Ada"}),
        status_callback=callback,
    )
    sdk.api.v2010.accounts(ACCOUNT).fetch()

    assert fake.refusals == []
    assert re.fullmatch(r"SM[0-9a-f]{32}", sent.sid) and sent.num_segments == "1"
    herald = TwilioProvider(
        config(fake, whatsapp_from=WHATSAPP_SENDER, status_callback_url=callback)
    )
    template = WhatsAppTemplate(CONTENT, {"1": "Ada"})
    assert fake.accepted == [
        herald.message_form(sms("hi")),
        herald.message_form(whatsapp(template)),
    ]


def test_sign_callback_signs_as_twilio_does() -> None:
    url = "https://herald.example.com/v1/webhooks/twilio/status"
    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}

    signature = sign_callback(url, params, TOKEN)

    assert RequestValidator(TOKEN).validate(url, params, signature)
    assert not RequestValidator("another-token").validate(url, params, signature)
    assert not RequestValidator(TOKEN).validate(
        url, params | {"MessageStatus": "failed"}, signature
    )
