"""Channel providers through the API: choose, check credentials with the provider itself
(a fake Twilio checking what it receives), mask secrets, store them encrypted, refuse bad input
changing nothing."""

from collections.abc import Iterator

import pytest

from tests.fakes.twilio import FakeTwilio, fake_twilio

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-0042"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with fake_twilio(ACCOUNT, auth_token=TOKEN) as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_saved_providers(db):
    yield
    db.execute("DELETE FROM channel_provider")


def twilio_config(fake: FakeTwilio, **overrides) -> dict:
    return {
        "account_sid": ACCOUNT,
        "auth_token": TOKEN,
        "from_number": "+15005550006",
        "base_url": fake.url,
        **overrides,
    }


def test_every_channel_starts_on_the_outbox(api):
    listed = api.get("/v1/providers").json()
    assert [(p["channel"], p["provider"], p["source"]) for p in listed] == [
        ("email", "outbox", "default"),
        ("sms", "outbox", "default"),
        ("whatsapp", "outbox", "default"),
        ("push", "outbox", "default"),
    ]


def test_twilio_is_checked_saved_encrypted_and_shown_masked(api, db, twilio):
    response = api.put(
        "/v1/providers/sms", json={"provider": "twilio", "config": twilio_config(twilio)}
    )
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["provider"] == "twilio" and shown["source"] == "account"
    assert shown["config"]["auth_token"] == "****0042"
    assert shown["limits"] == {"concurrency": 4, "per_second": 1.0}
    # The check called Twilio's account endpoint with the credentials.
    assert [r.method for r in twilio.requests] == ["GET"]
    stored = db.scalar("SELECT config FROM channel_provider WHERE channel = 'sms'")
    assert TOKEN not in str(stored) and "$encrypted" in str(stored)
    assert TOKEN not in api.get("/v1/providers/sms").text

    # A change without the secret keeps the saved one (the check still passes with it).
    again = api.put(
        "/v1/providers/sms",
        json={
            "provider": "twilio",
            "config": {
                k: v for k, v in twilio_config(twilio, per_second=3).items() if k != "auth_token"
            },
        },
    )
    assert again.status_code == 200, again.text
    assert again.json()["limits"]["per_second"] == 3
    assert api.post("/v1/providers/sms/check").json() == {
        "ok": True,
        "provider": "twilio",
        "detail": None,
    }


def test_wrong_credentials_are_a_clear_error_and_nothing_is_saved(api, db, twilio):
    response = api.put(
        "/v1/providers/sms",
        json={"provider": "twilio", "config": twilio_config(twilio, auth_token="wrong-token-99")},
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "config" and "refused the credentials" in error["reason"]
    assert db.scalar("SELECT count(*) FROM channel_provider") == 0


def test_a_check_that_starts_failing_marks_the_channel_misconfigured(api, twilio, anonymous):
    api.put("/v1/providers/sms", json={"provider": "twilio", "config": twilio_config(twilio)})
    twilio.auth_token = "rotated-elsewhere"
    result = api.post("/v1/providers/sms/check").json()
    assert result["ok"] is False and "refused" in result["detail"]
    shown = api.get("/v1/providers/sms").json()
    assert shown["state"] == "misconfigured" and "refused" in shown["state_detail"]
    assert anonymous.get("/readyz").json()["providers"] == {"sms": "misconfigured"}


@pytest.mark.parametrize(
    ("channel", "body", "field", "words"),
    [
        ("sms", {"provider": "carrier-pigeon"}, "provider", "unknown provider"),
        ("email", {"provider": "twilio", "config": {}}, "provider", "does not send email"),
        (
            "sms",
            {"provider": "twilio", "config": {"from_number": "+15005550006"}},
            "config.account_sid",
            "required",
        ),
        (
            "sms",
            {
                "provider": "twilio",
                "config": {"account_sid": ACCOUNT, "from_number": "+15005550006"},
            },
            "config",
            "auth_token",
        ),
        (
            "sms",
            {"provider": "twilio", "config": {"account_sid": ACCOUNT, "auth_token": TOKEN}},
            "config",
            "sender",
        ),
        ("push", {"provider": "outbox", "config": {"x": 1}}, "config", "no configuration"),
    ],
)
def test_bad_provider_input_is_422_naming_the_field(api, db, channel, body, field, words):
    response = api.put(f"/v1/providers/{channel}", json={**body, "check": False})
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(e["field"] == field and words in e["reason"] for e in errors), errors
    assert db.scalar("SELECT count(*) FROM channel_provider") == 0


def test_deleting_the_setting_goes_back_to_the_outbox(api, twilio):
    api.put("/v1/providers/sms", json={"provider": "twilio", "config": twilio_config(twilio)})
    assert api.delete("/v1/providers/sms").json()["provider"] == "outbox"


def test_a_whatsapp_flow_message_needs_an_approved_template(api):
    step = {
        "id": "hello",
        "type": "message",
        "channel": "whatsapp",
        "content": {"body": "Your order shipped"},
    }
    body = {"name": "WA", "trigger": {"type": "metric", "metric": "Placed Order"}, "steps": [step]}
    response = api.post("/v1/flows", json=body)
    assert response.status_code == 422
    fields = [e["field"] for e in response.json()["errors"]]
    assert "steps[0] (hello).content.whatsapp_template" in fields, fields
    step["content"]["whatsapp_template"] = {
        "content_sid": "HX" + "ab" * 16,
        "variables": {"1": "{{ profile.first_name }}"},
    }
    created = api.post("/v1/flows", json=body)
    assert created.status_code == 201, created.text
    api.delete(f"/v1/flows/{created.json()['id']}")


def test_saved_secrets_are_not_sent_to_a_new_host(api, twilio):
    api.put("/v1/providers/sms", json={"provider": "twilio", "config": twilio_config(twilio)})
    elsewhere = {
        k: v
        for k, v in twilio_config(twilio, base_url="http://127.0.0.1:9").items()
        if k != "auth_token"
    }
    response = api.put("/v1/providers/sms", json={"provider": "twilio", "config": elsewhere})
    assert response.status_code == 422
    assert "auth_token" in response.text  # asked for again, not reused for the new host
    assert api.get("/v1/providers/sms").json()["config"]["base_url"] == twilio.url
