"""Segment compatibility: the real segment-analytics-python client sends to Herald unchanged."""

import pytest
from segment.analytics import Client
from segment.analytics.request import APIError


@pytest.fixture
def segment(running_api, keys, db):
    errors: list = []

    def make(gzip: bool = False, write_key: str | None = None) -> Client:
        return Client(
            write_key or keys.write,
            host=running_api.base_url,
            sync_mode=True,
            gzip=gzip,
            max_retries=0,
            on_error=lambda error, batch: errors.append(error),
        )

    make.errors = errors
    return make


@pytest.mark.parametrize("gzip", [False, True])
def test_segment_sdk_identify_and_track_become_profile_and_events(segment, db, api, gzip):
    client = segment(gzip=gzip)
    client.identify(
        "user-42",
        {"email": "Ada@Example.com", "firstName": "Ada", "plan": "pro", "phone": "+31612345678"},
    )
    client.track("user-42", "Placed Order", {"revenue": 59.9, "order_id": "A-1"}, message_id="m-1")
    client.track("user-42", "Viewed Product", {"name": "Runner X"})
    client.track("user-42", "Placed Order", {"revenue": 59.9}, message_id="m-1")  # a retry
    client.flush()
    assert segment.errors == []

    [profile] = api.get("/v1/profiles", params={"external_id": "user-42"}).json()["data"]
    assert profile["email"] == "ada@example.com"
    assert profile["phone"] == "+31612345678"
    assert profile["first_name"] == "Ada"
    assert profile["properties"] == {"plan": "pro"}
    events = api.get("/v1/events", params={"profile_id": profile["id"]}).json()["data"]
    assert sorted(e["metric"] for e in events) == ["Placed Order", "Viewed Product"]
    order = next(e for e in events if e["metric"] == "Placed Order")
    assert order["value"] == 59.9 and order["unique_id"] == "m-1"
    assert order["source"] == "segment"


def test_segment_sdk_with_a_wrong_write_key_is_refused(segment, db):
    client = segment(write_key="hk_write_not-a-real-key")
    with pytest.raises(APIError) as refused:  # sync mode raises what the server said
        client.track("user-1", "Viewed Product", {})
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    assert db.scalar("SELECT count(*) FROM event") == 0


def test_track_with_anonymous_id_then_identify_merges_onto_one_profile(ingest, api):
    ingest.post("/v1/track", json={"anonymousId": "anon-7", "event": "Viewed Product"})
    ingest.post(
        "/v1/identify",
        json={"userId": "u-7", "anonymousId": "anon-7", "traits": {"email": "k@x.co"}},
    )
    [profile] = api.get("/v1/profiles").json()["data"]
    assert (profile["external_id"], profile["anonymous_id"], profile["email"]) == (
        "u-7",
        "anon-7",
        "k@x.co",
    )


def test_batch_reports_invalid_messages_and_keeps_valid_ones(ingest, db):
    response = ingest.post(
        "/v1/batch",
        json={
            "batch": [
                {"type": "track", "userId": "u1", "event": "Viewed Product", "messageId": "a"},
                {"type": "track", "event": "Viewed Product"},
                {"type": "identify", "userId": "u2", "traits": {"email": "nope"}},
                {"type": "page", "userId": "u1", "name": "Home"},
            ]
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["tracked"], body["ignored"]) == (1, 1)
    rejected = {r["index"]: r["errors"][0] for r in body["rejected"]}
    assert rejected[1]["reason"] == "userId or anonymousId is required"
    assert rejected[2]["field"] == "batch[2].email"
    assert db.scalar("SELECT count(*) FROM event") == 1


def test_batch_with_nothing_valid_is_a_400(ingest, db):
    response = ingest.post("/v1/batch", json={"batch": [{"type": "track", "event": "X"}]})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert db.scalar("SELECT count(*) FROM profile") == 0
