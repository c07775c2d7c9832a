"""Event ingest through the HTTP API: idempotency, per-item batch reports, bad input."""

from datetime import UTC, datetime, timedelta

ORDER = {
    "metric": "Placed Order",
    "profile": {"email": "Ada@Example.com"},
    "value": 129.95,
    "unique_id": "order-1001",
    "properties": {"items": ["Runner X"]},
}


def test_event_is_accepted_with_202_and_creates_the_profile(ingest, db):
    response = ingest.post("/v1/events", json=ORDER)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert db.scalar("SELECT email FROM profile WHERE id = :id", id=body["profile_id"]) == (
        "ada@example.com"
    )
    assert (
        db.scalar("SELECT count(*) FROM routing_outbox WHERE event_id = :id", id=body["event_id"])
        == 1
    )


def test_same_unique_id_twice_is_stored_once(ingest, db):
    first = ingest.post("/v1/events", json=ORDER).json()
    second = ingest.post("/v1/events", json=ORDER)
    assert second.status_code == 202
    assert second.json() == {**first, "status": "duplicate"}
    assert db.scalar("SELECT count(*) FROM event") == 1
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE kind = 'event'") == 1


def test_without_unique_id_the_same_second_dedups(ingest, db):
    at = "2026-05-01T10:00:00.250Z"
    event = {"metric": "Viewed Product", "profile": {"email": "a@b.co"}, "time": at}
    ingest.post("/v1/events", json=event)
    ingest.post("/v1/events", json={**event, "time": "2026-05-01T10:00:00.900Z"})
    ingest.post("/v1/events", json={**event, "time": "2026-05-01T10:00:01.000Z"})
    assert db.scalar("SELECT count(*) FROM event") == 2


def test_value_and_dollar_value_are_kept_in_step(ingest, api):
    ingest.post(
        "/v1/events",
        json={
            "metric": "Placed Order",
            "profile": {"email": "a@b.co"},
            "properties": {"$value": 42},
        },
    )
    [event] = api.get("/v1/events").json()["data"]
    assert event["value"] == 42.0
    ingest.post("/v1/events", json={**ORDER, "unique_id": "o2"})
    newest = api.get("/v1/events", params={"metric": "Placed Order"}).json()["data"][0]
    assert newest["properties"]["$value"] == 129.95


def test_batch_stores_valid_events_and_reports_each_invalid_one(ingest, db):
    events = [
        {**ORDER, "unique_id": "b1"},
        {"metric": "Placed Order", "profile": {"email": "not-an-email"}},
        {**ORDER, "unique_id": "b2"},
        {**ORDER, "unique_id": "b1"},
        {"metric": "Placed Order", "profile": {"phone": "12345"}},
        {"metric": 7, "profile": {"email": "x@y.co"}, "value": "lots"},
    ]
    response = ingest.post("/v1/events/batch", json={"events": events})
    assert response.status_code == 202, response.text
    report = response.json()
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (2, 1, 3)
    statuses = [r["status"] for r in report["results"]]
    assert statuses == ["accepted", "rejected", "accepted", "duplicate", "rejected", "rejected"]
    assert report["results"][1]["errors"][0]["field"] == "events[1].profile.email"
    assert report["results"][4]["errors"][0]["field"] == "events[4].profile.phone"
    fields = {e["field"] for e in report["results"][5]["errors"]}
    assert fields == {"events[5].metric", "events[5].value"}
    assert db.scalar("SELECT count(*) FROM event") == 2


def test_batch_where_nothing_is_valid_is_a_422_and_stores_nothing(ingest, db):
    response = ingest.post(
        "/v1/events/batch", json={"events": [{"metric": "", "profile": {"email": "a@b.co"}}]}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "events[0].metric"
    assert db.scalar("SELECT count(*) FROM event") == 0


def test_oversized_batch_is_refused_whole(ingest, db):
    events = [{**ORDER, "unique_id": f"o{i}"} for i in range(1001)]
    response = ingest.post("/v1/events/batch", json={"events": events})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "events", "reason": "at most 1000 events per batch (got 1001)"}
    ]
    assert db.scalar("SELECT count(*) FROM event") == 0


def test_event_time_out_of_bounds(ingest, db):
    for when, reason in [
        ("1999-12-31T23:59:59Z", "before 2000"),
        ((datetime.now(UTC) + timedelta(days=400)).isoformat(), "1 year in the future"),
    ]:
        response = ingest.post("/v1/events", json={**ORDER, "time": when})
        assert response.status_code == 422
        [error] = response.json()["errors"]
        assert error["field"] == "time" and reason in error["reason"]
    assert db.scalar("SELECT count(*) FROM event") == 0


def test_bad_input_names_the_field(ingest, db):
    cases = [
        ({**ORDER, "profile": {}}, "profile"),
        ({**ORDER, "profile": {"email": "ada@"}}, "profile.email"),
        ({**ORDER, "profile": {"phone": "+1 555"}}, "profile.phone"),
        ({**ORDER, "profile": {"email": "a@b.co", "timezone": "Mars/Base"}}, "profile.timezone"),
        ({**ORDER, "value": "a lot"}, "value"),
        ({**ORDER, "properties": ["not", "an", "object"]}, "properties"),
        ({"profile": {"email": "a@b.co"}}, "metric"),
    ]
    for body, field in cases:
        response = ingest.post("/v1/events", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert db.scalar("SELECT count(*) FROM event") == 0
    assert db.scalar("SELECT count(*) FROM profile") == 0


def test_backfilled_events_are_marked_for_the_router(ingest, db):
    ingest.post("/v1/events", json={**ORDER, "backfill": True, "time": "2024-01-01T00:00:00Z"})
    assert db.rows("SELECT backfill FROM routing_outbox WHERE kind = 'event'") == [(True,)]


def test_custom_metric_is_created_on_first_use(ingest, api):
    ingest.post("/v1/events", json={**ORDER, "metric": "Joined Loyalty Club"})
    metrics = {m["name"]: m["builtin"] for m in api.get("/v1/metrics").json()}
    assert metrics["Joined Loyalty Club"] is False
    assert metrics["Placed Order"] is True


def test_events_list_pages_newest_first(ingest, api):
    for i in range(5):
        ingest.post("/v1/events", json={**ORDER, "unique_id": f"p{i}"})
    first = api.get("/v1/events", params={"limit": 3}).json()
    second = api.get("/v1/events", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    ids = [e["unique_id"] for e in first["data"] + second["data"]]
    assert ids == ["p4", "p3", "p2", "p1", "p0"]
    assert second["next_cursor"] is None


def test_concurrent_first_events_of_one_new_person_make_one_profile(ingest, db):
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> int:
        body = {**ORDER, "profile": {"email": "new@x.co"}, "metric": f"Custom {i % 3}"}
        return ingest.post("/v1/events", json={**body, "unique_id": f"c{i}"}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, range(16)))
    assert codes == [202] * 16
    assert db.scalar("SELECT count(*) FROM profile") == 1
    assert db.scalar("SELECT count(*) FROM event") == 16


def test_nul_characters_are_refused_not_a_500(ingest, api, db):
    event = {**ORDER, "properties": {"note": "a\u0000b"}}
    response = ingest.post("/v1/events", json=event)
    assert response.status_code == 422
    assert "NUL" in response.json()["errors"][0]["reason"]
    named = api.post("/v1/profiles", json={"email": "n@x.co", "first_name": "x\u0000"})
    assert named.status_code == 422
    assert db.scalar("SELECT count(*) FROM event") + db.scalar("SELECT count(*) FROM profile") == 0
