"""Account settings: read, change only what is sent, refuse bad values without storing any."""

import pytest

ACCOUNT_COLUMNS = (
    "name, timezone, enabled_channels, smart_sending_hours, quiet_hours_start, quiet_hours_end,"
    " frequency_caps"
)


@pytest.fixture
def account(api):
    """The settings as they were; restored afterwards, since the account row outlives a test."""
    before = api.get("/v1/account").json()
    yield before
    restored = api.patch("/v1/account", json=before)
    assert restored.status_code == 200, restored.text
    assert restored.json() == before


def stored(db) -> list:
    return db.rows(f"SELECT {ACCOUNT_COLUMNS} FROM account")


def test_get_returns_every_setting(api, account):
    response = api.get("/v1/account")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "name",
        "timezone",
        "enabled_channels",
        "smart_sending_hours",
        "quiet_hours_start",
        "quiet_hours_end",
        "frequency_caps",
        "delivery_guarantees",
    }
    assert set(body["smart_sending_hours"]) == {"email", "sms", "whatsapp", "push"}
    assert set(body["enabled_channels"]) <= {"email", "sms", "whatsapp", "push"}


def test_patch_changes_only_the_fields_sent(api, db, account):
    response = api.patch(
        "/v1/account",
        json={"timezone": "Europe/Amsterdam", "quiet_hours_start": "22:30"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {**account, "timezone": "Europe/Amsterdam", "quiet_hours_start": "22:30"}
    assert api.get("/v1/account").json() == body
    assert db.scalar("SELECT timezone FROM account") == "Europe/Amsterdam"


def test_smart_sending_hours_merge_per_channel(api, account):
    response = api.patch("/v1/account", json={"smart_sending_hours": {"sms": 48, "push": 0}})
    assert response.status_code == 200
    assert response.json()["smart_sending_hours"] == {
        **account["smart_sending_hours"],
        "sms": 48,
        "push": 0,
    }
    response = api.patch("/v1/account", json={"smart_sending_hours": {"email": 168}})
    assert response.json()["smart_sending_hours"]["sms"] == 48
    assert response.json()["smart_sending_hours"]["email"] == 168


def test_enabled_channels_and_frequency_caps(api, account):
    response = api.patch(
        "/v1/account",
        json={
            "enabled_channels": ["email", "sms"],
            "frequency_caps": {"email": {"per_day": 2, "per_week": 5}, "sms": {"per_week": 3}},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["enabled_channels"] == ["email", "sms"]
    assert body["frequency_caps"] == {
        "email": {"per_day": 2, "per_week": 5},
        "sms": {"per_day": None, "per_week": 3},
    }
    assert api.get("/v1/account").json() == body


BAD_SETTINGS = [
    ({"timezone": "Mars/Base"}, "timezone"),
    ({"timezone": "Europe"}, "timezone"),
    ({"timezone": ""}, "timezone"),
    ({"quiet_hours_start": "24:00"}, "quiet_hours_start"),
    ({"quiet_hours_start": "9:00"}, "quiet_hours_start"),
    ({"quiet_hours_end": "21:60"}, "quiet_hours_end"),
    ({"quiet_hours_end": "9pm"}, "quiet_hours_end"),
    ({"smart_sending_hours": {"email": 169}}, "smart_sending_hours"),
    ({"smart_sending_hours": {"sms": -1}}, "smart_sending_hours"),
    ({"smart_sending_hours": {"fax": 12}}, "smart_sending_hours"),
    ({"smart_sending_hours": {"email": 1.5}}, "smart_sending_hours"),
    ({"enabled_channels": ["email", "fax"]}, "enabled_channels"),
    ({"frequency_caps": {"email": {"per_day": 0}}}, "frequency_caps"),
    ({"name": ""}, "name"),
]


def test_bad_setting_is_422_naming_the_field_and_changes_nothing(api, db, account):
    before = stored(db)
    for change, field in BAD_SETTINGS:
        # With a valid change beside it: the whole request is refused, not just the bad field.
        response = api.patch("/v1/account", json={"name": "Changed", **change})
        assert response.status_code == 422, (change, response.text)
        assert response.json()["code"] == "validation_error"
        assert [e["field"].partition(".")[0] for e in response.json()["errors"]] == [field], (
            change,
            response.json(),
        )
    assert stored(db) == before


def test_several_bad_settings_are_all_reported(api, db, account):
    before = stored(db)
    response = api.patch(
        "/v1/account",
        json={"timezone": "Nowhere/Land", "quiet_hours_end": "25:00", "smart_sending_hours": []},
    )
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {
        "timezone",
        "quiet_hours_end",
        "smart_sending_hours",
    }
    assert stored(db) == before


def test_account_needs_a_private_key(anonymous, ingest, db, account):
    before = stored(db)
    assert anonymous.get("/v1/account").status_code == 401
    assert ingest.get("/v1/account").status_code == 403
    assert ingest.patch("/v1/account", json={"timezone": "Asia/Tokyo"}).status_code == 403
    assert stored(db) == before


def test_delivery_guarantees_override_the_defaults_per_channel(api, account):
    response = api.patch(
        "/v1/account", json={"delivery_guarantees": {"email": {"marketing": "at_least_once"}}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["delivery_guarantees"] == {
        "email": {"marketing": "at_least_once", "transactional": None}
    }
    bad = api.patch("/v1/account", json={"delivery_guarantees": {"sms": {"marketing": "twice"}}})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "delivery_guarantees.sms.marketing"
    cleared = api.patch("/v1/account", json={"delivery_guarantees": {"email": {}}})
    assert cleared.json()["delivery_guarantees"] == {}
