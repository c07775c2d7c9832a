"""GET /v1/outbox and GET /v1/deliveries: what was sent, skipped or failed, and why."""

import pytest

from activities.delivery import DeliveryActivities
from herald.core.config import Settings
from tests.test_delivery import account, campaign, clock, make_profile  # noqa: F401


@pytest.fixture
def deliver(db, account, clock):  # noqa: F811
    return DeliveryActivities(db.engine, Settings(), clock=clock).deliver


@pytest.fixture
def sent(db, deliver) -> dict:
    """Ada got an email and an SMS; Grace got an email; Linus was skipped (no consent)."""
    ada = make_profile(db, phone="+31612345678", timezone="UTC", consent=("email", "sms"))
    grace = make_profile(db, email="grace@example.com", first_name="Grace")
    linus = make_profile(db, email="linus@example.com", consent=())
    return {
        "ada_email": deliver(campaign(ada)),
        "ada_sms": deliver(campaign(ada, message="m2", channel="sms")),
        "grace_email": deliver(campaign(grace)),
        "linus_email": deliver(campaign(linus)),
        "ada": ada,
        "grace": grace,
        "linus": linus,
    }


def test_outbox_lists_sent_messages_newest_first(api, sent):
    response = api.get("/v1/outbox")
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    assert [m["delivery_id"] for m in page["data"]] == [
        sent["grace_email"].delivery_id,
        sent["ada_sms"].delivery_id,
        sent["ada_email"].delivery_id,
    ]
    newest = page["data"][0]
    assert set(newest) == {
        "id",
        "delivery_id",
        "profile_id",
        "channel",
        "to",
        "subject",
        "body",
        "tracking",
        "created_at",
    }
    assert newest["to"] == "grace@example.com"
    assert (newest["subject"], newest["body"]) == ("Hi Grace", "Hello Grace")
    assert newest["tracking"] == {
        "$delivery_id": sent["grace_email"].delivery_id,
        "run_kind": "campaign",
        "run_id": "cp_1",
        "step_id": "m1",
    }


def test_outbox_filters_by_profile_channel_and_delivery(api, sent):
    def ids(**params) -> list[str]:
        return [m["delivery_id"] for m in api.get("/v1/outbox", params=params).json()["data"]]

    assert ids(profile_id=sent["ada"]) == [
        sent["ada_sms"].delivery_id,
        sent["ada_email"].delivery_id,
    ]
    assert ids(channel="sms") == [sent["ada_sms"].delivery_id]
    assert ids(channel="email", profile_id=sent["grace"]) == [sent["grace_email"].delivery_id]
    assert ids(delivery_id=sent["ada_email"].delivery_id) == [sent["ada_email"].delivery_id]
    assert ids(profile_id=sent["linus"]) == []


def test_outbox_pages_with_a_cursor(api, sent):
    first = api.get("/v1/outbox", params={"limit": 2}).json()
    second = api.get("/v1/outbox", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert len(first["data"]) == 2 and len(second["data"]) == 1
    assert second["next_cursor"] is None
    everything = api.get("/v1/outbox").json()["data"]
    assert first["data"] + second["data"] == everything


def test_deliveries_show_skips_with_their_reasons(api, sent):
    response = api.get("/v1/deliveries", params={"status": "skipped"})
    assert response.status_code == 200, response.text
    [linus] = response.json()["data"]
    assert linus["id"] == sent["linus_email"].delivery_id
    assert (linus["profile_id"], linus["reason"], linus["sent_at"]) == (
        sent["linus"],
        "no_consent",
        None,
    )
    assert linus["idempotency_key"] == f"campaign:cp_1:m1:{sent['linus']}"


def test_deliveries_filter_by_run_step_profile_and_channel(api, sent):
    def ids(**params) -> list[str]:
        response = api.get("/v1/deliveries", params=params)
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()["data"]]

    everything = ids()
    assert len(everything) == 4
    assert everything == sorted(everything, reverse=True)
    assert ids(run_id="cp_1", step_id="m2") == [sent["ada_sms"].delivery_id]
    assert ids(channel="email", status="sent") == [
        sent["grace_email"].delivery_id,
        sent["ada_email"].delivery_id,
    ]
    assert ids(profile_id=sent["ada"], run_kind="campaign") == [
        sent["ada_sms"].delivery_id,
        sent["ada_email"].delivery_id,
    ]
    assert ids(run_kind="flow") == []
    first = api.get("/v1/deliveries", params={"limit": 3}).json()
    rest = api.get("/v1/deliveries", params={"cursor": first["next_cursor"]}).json()
    assert [d["id"] for d in first["data"] + rest["data"]] == everything


@pytest.mark.parametrize("path", ["/v1/outbox", "/v1/deliveries"])
def test_listing_needs_a_private_key(anonymous, ingest, path):
    response = anonymous.get(path)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert ingest.get(path).status_code == 403  # a write key only sends events


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/outbox", {"channel": "fax"}, "channel"),
        ("/v1/outbox", {"limit": 0}, "limit"),
        ("/v1/outbox", {"cursor": "not-a-cursor!"}, "cursor"),
        ("/v1/deliveries", {"status": "lost"}, "status"),
        ("/v1/deliveries", {"channel": "pigeon"}, "channel"),
        ("/v1/deliveries", {"run_kind": "journey"}, "run_kind"),
        ("/v1/deliveries", {"limit": 501}, "limit"),
    ],
)
def test_bad_filter_values_are_422_naming_the_field(api, path, params, field):
    response = api.get(path, params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert [e["field"].removeprefix("query.") for e in body["errors"]] == [field]
