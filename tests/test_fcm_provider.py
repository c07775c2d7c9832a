"""FCM HTTP v1 push against a local Google: real RS256 grants checked with the public key, real
Bearer tokens, Google's error shapes. Time moves by an injected clock, never by sleeping."""

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import httpx
import jwt
import pytest
from pydantic import ValidationError

from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderLimits,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
)
from herald.delivery.providers.fcm import FcmConfig, FcmProvider
from models.enums import Channel
from tests.fakes.google_fcm import (
    EXPIRE_ACCESS_TOKEN,
    GoogleFcm,
    ServiceAccountKey,
    google_fcm,
    invalid_token,
    quota_exceeded,
    sender_id_mismatch,
    third_party_auth_error,
    unavailable,
    unregistered,
)
from tests.fakes.http_server import Reply, fake_server

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class Clock:
    """Wall-clock seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def key() -> ServiceAccountKey:
    return ServiceAccountKey.generate()


@pytest.fixture(scope="module")
def other_key(key: ServiceAccountKey) -> ServiceAccountKey:
    """Another RSA key posing as the same account key (same email and kid)."""
    return ServiceAccountKey.generate(private_key_id=key.private_key_id)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def google_server(key: ServiceAccountKey) -> Iterator[GoogleFcm]:
    with google_fcm(key) as fake:
        yield fake


@pytest.fixture
def google(google_server: GoogleFcm, clock: Clock) -> GoogleFcm:
    google_server.reset(clock=clock)
    return google_server


def config_for(google: GoogleFcm, key: ServiceAccountKey, **fields: object) -> FcmConfig:
    return FcmConfig.model_validate(
        {"service_account_json": key.json(google.token_uri), "base_url": google.url, **fields}
    )


@pytest.fixture
async def fcm(
    google: GoogleFcm, key: ServiceAccountKey, clock: Clock
) -> AsyncIterator[FcmProvider]:
    provider = FcmProvider(config_for(google, key), clock=clock)
    yield provider
    await provider.aclose()


def push(*tokens: str, delivery_id: str = "dlv-1", **fields: object) -> OutgoingMessage:
    return OutgoingMessage(
        delivery_id=delivery_id,
        idempotency_key=f"run-1:step-1:{delivery_id}",
        profile_id="prof-1",
        channel=Channel.push,
        to_address=tokens[0] if tokens else "",
        subject="Your cart misses you",
        body="Come back for 10% off",
        push_tokens=tokens,
        **fields,
    )


# --- sending ------------------------------------------------------------------------------


async def test_two_tokens_are_two_sends_and_one_grant_serves_several_messages(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    receipts = [
        await fcm.send(push("phone", "tablet", delivery_id=f"dlv-{n}", data={"cart": "42"}))
        for n in range(3)
    ]

    assert google.grants == 1
    assert google.delivered_to() == ["phone", "tablet"] * 3
    assert len(set(google.bearers)) == 1
    assert google.delivered[0] == {
        "token": "phone",
        "notification": {"title": "Your cart misses you", "body": "Come back for 10% off"},
        "data": {"cart": "42", "herald_delivery_id": "dlv-0"},
    }
    names = receipts[0].provider_message_id.split(" ")
    assert len(names) == 2 and all(n.startswith("projects/herald-test/messages/") for n in names)
    assert receipts[0].dead_tokens == ()


async def test_without_push_tokens_the_address_is_the_token_and_duplicates_send_once(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    await fcm.send(replace(push("x"), push_tokens=()))
    await fcm.send(push("phone", "phone", "tablet"))

    assert google.delivered_to() == ["x", "phone", "tablet"]


async def test_a_message_without_any_token_is_rejected_without_calling_google(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    with pytest.raises(ProviderRejected) as refused:
        await fcm.send(push())

    assert refused.value.reason == "invalid_address"
    assert google.grants == 0


async def test_an_unregistered_token_among_two_comes_back_dead_on_the_receipt(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    google.script("old-phone", unregistered())

    receipt = await fcm.send(push("old-phone", "tablet"))

    assert receipt.dead_tokens == ("old-phone",)
    assert receipt.provider_message_id.startswith("projects/herald-test/messages/")
    assert " " not in receipt.provider_message_id
    assert google.delivered_to() == ["tablet"]


async def test_the_only_token_unregistered_rejects_the_delivery_with_the_dead_token(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    google.script("old-phone", unregistered())

    with pytest.raises(ProviderRejected) as refused:
        await fcm.send(push("old-phone"))

    assert refused.value.reason == "token_unregistered"
    assert refused.value.dead_tokens == ("old-phone",)
    assert refused.value.provider_code == "UNREGISTERED"


async def test_an_invalid_token_is_dead_but_a_payload_fcm_refuses_kills_no_token(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    google.script("garbled", invalid_token())
    with pytest.raises(ProviderRejected) as garbled:
        await fcm.send(push("garbled"))
    # "from" is a data key FCM keeps for itself: the fake refuses it as a BadRequest field.
    with pytest.raises(ProviderRejected) as payload:
        await fcm.send(push("phone", "tablet", data={"from": "herald"}))

    assert garbled.value.reason == "token_unregistered"
    assert garbled.value.dead_tokens == ("garbled",)
    assert payload.value.reason == "invalid_message"
    assert payload.value.dead_tokens == ()
    assert google.delivered == []


# --- access tokens ------------------------------------------------------------------------


async def test_an_access_token_google_expired_early_is_renewed_once_and_the_send_retried(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    await fcm.send(push("phone"))
    google.script("phone", EXPIRE_ACCESS_TOKEN)

    receipt = await fcm.send(push("phone"))

    assert receipt.provider_message_id
    assert google.grants == 2
    assert google.unauthorized == 1
    assert google.bearers[0] != google.bearers[1]


async def test_a_401_to_a_fresh_access_token_too_is_misconfigured(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    google.script("phone", EXPIRE_ACCESS_TOKEN, EXPIRE_ACCESS_TOKEN)

    with pytest.raises(ProviderMisconfigured, match="freshly granted"):
        await fcm.send(push("phone"))

    assert google.grants == 2
    assert google.delivered == []


async def test_a_token_near_its_expiry_is_renewed_before_google_would_refuse_it(
    fcm: FcmProvider, google: GoogleFcm, clock: Clock
) -> None:
    google.reset(clock=clock, token_lifetime=90)

    await fcm.send(push("phone"))
    clock.advance(29)  # 61 s left: still good
    await fcm.send(push("phone"))
    grants_while_fresh = google.grants
    clock.advance(2)  # 59 s left: inside the refresh margin
    await fcm.send(push("phone"))

    assert grants_while_fresh == 1
    assert google.grants == 2
    assert google.unauthorized == 0


async def test_ten_concurrent_sends_wait_for_one_grant(fcm: FcmProvider, google: GoogleFcm) -> None:
    await asyncio.gather(*(fcm.send(push(f"device-{n}")) for n in range(10)))

    assert google.grants == 1
    assert sorted(google.delivered_to()) == sorted(f"device-{n}" for n in range(10))


async def test_a_key_google_cannot_verify_is_misconfigured_naming_what_google_said(
    google: GoogleFcm, other_key: ServiceAccountKey, clock: Clock
) -> None:
    fcm = FcmProvider(config_for(google, other_key), clock=clock)

    with pytest.raises(ProviderMisconfigured, match="invalid_grant: Invalid JWT Signature"):
        await fcm.send(push("phone"))
    await fcm.aclose()

    assert google.grants == 0
    assert len(google.refused_grants) == 1
    assert google.delivered == []


# --- classified errors --------------------------------------------------------------------


async def test_503_with_retry_after_is_unavailable_for_that_long(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    google.script("phone", unavailable(retry_after=7))

    with pytest.raises(ProviderUnavailable) as busy:
        await fcm.send(push("phone"))

    assert busy.value.retry_after == 7


async def test_quota_exceeded_without_retry_after_waits_the_minute_fcm_asks_for(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    google.script("phone", quota_exceeded())

    with pytest.raises(ProviderUnavailable) as busy:
        await fcm.send(push("phone"))

    assert busy.value.retry_after == 60


async def test_one_device_reached_is_a_receipt_even_if_another_was_unavailable(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    # Raising would make the send path retry, and notify the reached phone a second time.
    google.script("tablet", unavailable(retry_after=7))

    receipt = await fcm.send(push("phone", "tablet"))

    assert google.delivered_to() == ["phone"]
    assert receipt.dead_tokens == ()


async def test_sender_id_mismatch_and_third_party_auth_errors_are_misconfigured(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    google.script("foreign", sender_id_mismatch())
    google.script("iphone", third_party_auth_error())

    with pytest.raises(ProviderMisconfigured, match="SENDER_ID_MISMATCH"):
        await fcm.send(push("foreign"))
    with pytest.raises(ProviderMisconfigured, match="APNs"):
        await fcm.send(push("iphone"))

    # A THIRD_PARTY_AUTH_ERROR is a 401 about Apple's credentials, not about our access token.
    assert google.grants == 1


async def test_a_project_the_account_may_not_send_for_is_misconfigured(
    google: GoogleFcm, key: ServiceAccountKey, clock: Clock
) -> None:
    fcm = FcmProvider(config_for(google, key, project_id="someone-else"), clock=clock)

    with pytest.raises(ProviderMisconfigured, match="someone-else"):
        await fcm.send(push("phone"))
    await fcm.aclose()

    assert google.server is not None
    assert google.server.requests[-1].path == "/v1/projects/someone-else/messages:send"


async def test_an_unreachable_fcm_is_unavailable(
    google: GoogleFcm, key: ServiceAccountKey, clock: Clock
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    fcm = FcmProvider(config_for(google, key, base_url=dead_url), clock=clock)

    with pytest.raises(ProviderUnavailable, match="could not reach FCM"):
        await fcm.send(push("phone"))
    await fcm.aclose()


async def test_a_token_endpoint_that_times_out_is_unavailable(key: ServiceAccountKey) -> None:
    def slow(request: object) -> Reply:
        time.sleep(0.2)
        return Reply(200, {})

    with fake_server(slow) as token_endpoint:
        config = FcmConfig(
            service_account_json=key.json(f"{token_endpoint.url}/token"),
            timeout_seconds=0.05,
        )
        fcm = FcmProvider(config)
        with pytest.raises(ProviderUnavailable, match="timed out"):
            await fcm.send(push("phone"))
        await fcm.aclose()


# --- check() ------------------------------------------------------------------------------


async def test_check_obtains_a_fresh_access_token_each_time(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    await fcm.check()
    await fcm.check()

    assert google.grants == 2
    assert google.delivered == []


async def test_check_with_a_key_google_refuses_is_misconfigured(
    google: GoogleFcm, other_key: ServiceAccountKey, clock: Clock
) -> None:
    fcm = FcmProvider(config_for(google, other_key), clock=clock)

    with pytest.raises(ProviderMisconfigured, match="Invalid JWT Signature"):
        await fcm.check()
    await fcm.aclose()


async def test_check_names_a_401_from_the_token_endpoint_and_a_503_is_unavailable(
    fcm: FcmProvider, google: GoogleFcm
) -> None:
    google.answer_next_grant(
        Reply(
            401, {"error": "invalid_client", "error_description": "The OAuth client was deleted."}
        )
    )
    google.answer_next_grant(Reply(503, b"", headers={"Retry-After": "3"}))

    with pytest.raises(ProviderMisconfigured, match="401 invalid_client: The OAuth client was"):
        await fcm.check()
    with pytest.raises(ProviderUnavailable) as busy:
        await fcm.check()

    assert busy.value.retry_after == 3
    assert google.grants == 0


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing", ["type", "client_email", "private_key", "private_key_id", "token_uri", "project_id"]
)
def test_a_key_file_without_a_required_field_is_refused_naming_it(
    key: ServiceAccountKey, missing: str
) -> None:
    key_file = key.key_file("https://oauth2.example.test/token")
    del key_file[missing]

    with pytest.raises(ValidationError) as refused:
        FcmConfig(service_account_json=json.dumps(key_file))

    assert f"has no {missing}" in str(refused.value)
    assert "PRIVATE KEY" not in str(refused.value)


@pytest.mark.parametrize(
    ("key_json", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        (None, 'not "service_account"'),
        ("bad-pem", "not a PEM private key"),
    ],
)
def test_a_key_file_that_is_no_service_account_key_is_refused(
    key: ServiceAccountKey, key_json: str | None, complaint: str
) -> None:
    if key_json is None:
        key_json = key.json("https://oauth2.example.test/token", type="authorized_user")
    elif key_json == "bad-pem":
        key_json = key.json("https://oauth2.example.test/token", private_key="-----BEGIN nope")

    with pytest.raises(ValidationError, match=complaint) as refused:
        FcmConfig(service_account_json=key_json)

    assert "PRIVATE KEY-----" not in str(refused.value)


def test_config_defaults_and_limits(key: ServiceAccountKey) -> None:
    config = FcmConfig(service_account_json=key.json("https://oauth2.example.test/token"))
    fcm = FcmProvider(config)

    assert fcm.name == "fcm"
    assert config.base_url == "https://fcm.googleapis.com"
    assert FcmConfig.scope == SCOPE
    assert fcm.project_id == "herald-test"
    assert fcm.limits == ProviderLimits(concurrency=32, per_second=10_000.0)
    assert "PRIVATE" not in repr(config)
    with pytest.raises(ValidationError):
        FcmConfig(service_account_json=config.service_account_json, scope="cloud-platform")


# --- the fake itself ----------------------------------------------------------------------


def grant(
    google: GoogleFcm, signer: ServiceAccountKey, kid: str, **claims: object
) -> httpx.Response:
    now = int(time.time())
    payload = {
        "iss": signer.client_email,
        "scope": SCOPE,
        "aud": google.token_uri,
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    assertion = jwt.encode(payload, signer.private_key, algorithm="RS256", headers={"kid": kid})
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    return httpx.post(google.token_uri, data=form)


def test_the_fake_refuses_a_grant_signed_with_another_key(
    google: GoogleFcm, key: ServiceAccountKey, other_key: ServiceAccountKey
) -> None:
    good = grant(google, key, key.private_key_id)
    forged = grant(google, other_key, key.private_key_id)

    assert good.status_code == 200 and good.json()["token_type"] == "Bearer"
    assert forged.status_code == 400
    assert forged.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid JWT Signature.",
    }
    assert google.grants == 1


@pytest.mark.parametrize(
    ("kid", "claims", "error"),
    [
        ("not-the-kid", {}, "invalid_grant"),
        (None, {"scope": "https://www.googleapis.com/auth/cloud-platform"}, "invalid_scope"),
        (None, {"aud": "https://elsewhere.example.test/token"}, "invalid_grant"),
        (None, {"iss": "intruder@example.test"}, "invalid_grant"),
        (None, {"exp": int(time.time()) + 7200}, "invalid_grant"),
        (None, {"exp": int(time.time()) - 10, "iat": int(time.time()) - 3000}, "invalid_grant"),
    ],
)
def test_the_fake_refuses_a_grant_with_the_wrong_kid_or_claims(
    google: GoogleFcm,
    key: ServiceAccountKey,
    kid: str | None,
    claims: dict[str, object],
    error: str,
) -> None:
    refused = grant(google, key, kid or key.private_key_id, **claims)

    assert refused.status_code == 400
    assert refused.json()["error"] == error
    assert google.grants == 0


def test_the_fake_refuses_a_bearer_it_did_not_issue_and_data_that_is_not_text(
    google: GoogleFcm, key: ServiceAccountKey
) -> None:
    access = grant(google, key, key.private_key_id).json()["access_token"]
    url = f"{google.url}/v1/projects/herald-test/messages:send"
    message = {"token": "phone", "notification": {"body": "hi"}, "data": {"n": "1"}}
    with httpx.Client() as client:
        stranger = client.post(
            url, json={"message": message}, headers={"Authorization": "Bearer ya29.made-up"}
        )
        numeric = client.post(
            url,
            json={"message": {**message, "data": {"n": 1}}},
            headers={"Authorization": f"Bearer {access}"},
        )
        accepted = client.post(
            url, json={"message": message}, headers={"Authorization": f"Bearer {access}"}
        )

    assert stranger.status_code == 401
    assert stranger.json()["error"]["status"] == "UNAUTHENTICATED"
    assert numeric.status_code == 400
    assert numeric.json()["error"]["details"][0]["fieldViolations"][0]["field"] == (
        "message.data[0].value"
    )
    assert accepted.status_code == 200
    assert google.delivered_to() == ["phone"]
