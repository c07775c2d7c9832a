"""Profiles through the management API: identity, partial updates, deletes, listing, consent."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlmodel import select

from herald.core.db import session_scope
from models.events import Metric, ProfileMetricStat

ADA = {
    "external_id": "cust-1",
    "email": "Ada@Example.com",
    "phone": "+31 6 1234 5678",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "timezone": "Europe/Amsterdam",
    "push_tokens": ["tok-1"],
    "properties": {"plan": "gold", "shoe_size": 38},
}


def create(api, **body) -> dict:
    response = api.post("/v1/profiles", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def fields(response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


def concurrently(call, times: int = 8) -> list[int]:
    """Status codes of `times` simultaneous calls of call(i)."""
    with ThreadPoolExecutor(times) as pool:
        return sorted(pool.map(lambda i: call(i).status_code, range(times)))


def snapshot(db) -> list:
    return db.rows(
        "SELECT id, external_id, email, phone, anonymous_id, first_name, last_name, timezone,"
        " push_tokens, properties, updated_at FROM profile ORDER BY id"
    )


# ---- create ------------------------------------------------------------------------------------


def test_create_returns_201_with_normalised_identifiers(api, db):
    body = create(api, **ADA)
    assert body["id"].startswith("prf_")
    assert body["email"] == "ada@example.com"
    assert body["phone"] == "+31612345678"
    assert body["external_id"] == "cust-1"
    assert body["anonymous_id"] is None
    assert body["properties"] == {"plan": "gold", "shoe_size": 38}
    assert body["push_tokens"] == ["tok-1"]
    assert body["consent"] == {
        "email": "never_subscribed",
        "sms": "never_subscribed",
        "whatsapp": "never_subscribed",
        "push": "never_subscribed",
    }
    assert db.scalar("SELECT email FROM profile WHERE id = :id", id=body["id"]) == (
        "ada@example.com"
    )


def test_create_with_only_an_anonymous_id(api, db):
    body = create(api, anonymous_id="anon-42")
    assert body["anonymous_id"] == "anon-42"
    assert db.scalar("SELECT count(*) FROM profile") == 1


def test_create_with_an_existing_identity_is_409_profile_exists(api, db):
    ada = create(api, **ADA)
    for duplicate in (
        {"email": "ADA@example.COM"},
        {"phone": "+31612345678"},
        {"external_id": "cust-1"},
        {"email": "someone-else@example.com", "external_id": "cust-1"},
    ):
        response = api.post("/v1/profiles", json=duplicate)
        assert response.status_code == 409, duplicate
        body = response.json()
        assert body["code"] == "profile_exists"
        assert ada["id"] in body["message"]
        assert fields(response) == ["identity"]
    assert db.scalar("SELECT count(*) FROM profile") == 1
    assert db.scalar("SELECT email FROM profile") == "ada@example.com"


BAD_PROFILES = [
    ({}, "body"),
    ({"first_name": "Ada"}, "body"),
    ({"email": "ada@"}, "email"),
    ({"email": "ada@example.com", "phone": "0612345678"}, "phone"),
    ({"email": "ada@example.com", "timezone": "Mars/Base"}, "timezone"),
    ({"email": "ada@example.com", "timezone": "Europe"}, "timezone"),
    ({"email": "ada@example.com", "properties": ["not", "an", "object"]}, "properties"),
    ({"email": "ada@example.com", "push_tokens": "tok"}, "push_tokens"),
    ({"external_id": ""}, "external_id"),
    ({"email": "ada@example.com", "first_name": "x" * 256}, "first_name"),
]


def test_create_with_bad_input_names_the_field_and_stores_nothing(api, db):
    for body, field in BAD_PROFILES:
        for path in ("/v1/profiles", "/v1/profiles/upsert"):
            response = api.post(path, json=body)
            assert response.status_code == 422, (path, body, response.text)
            assert response.json()["code"] == "validation_error"
            assert field in fields(response), (body, response.json())
    assert db.scalar("SELECT count(*) FROM profile") == 0


# ---- upsert ------------------------------------------------------------------------------------


def test_upsert_creates_with_201_then_updates_with_200(api, db):
    first = api.post("/v1/profiles/upsert", json={"email": "ada@example.com", "first_name": "A"})
    assert first.status_code == 201
    second = api.post(
        "/v1/profiles/upsert",
        json={"email": "ADA@example.com", "last_name": "Lovelace", "properties": {"vip": True}},
    )
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["first_name"] == "A"  # not sent, so kept
    assert second.json()["last_name"] == "Lovelace"
    assert second.json()["properties"] == {"vip": True}
    assert db.scalar("SELECT count(*) FROM profile") == 1


def test_concurrent_upserts_of_one_new_identity_make_one_profile(api, db):
    for attempt in range(3):
        email = f"race{attempt}@example.com"
        codes = concurrently(
            lambda i, email=email: api.post(
                "/v1/profiles/upsert", json={"email": email, "properties": {f"k{i}": i}}
            )
        )
        assert codes == [200] * 7 + [201], codes
    assert db.scalar("SELECT count(*) FROM profile") == 3


def test_concurrent_creates_of_one_identity_give_one_201_and_409s(api, db):
    for attempt in range(3):
        email = f"race{attempt}@example.com"
        codes = concurrently(
            lambda _i, email=email: api.post("/v1/profiles", json={"email": email})
        )
        assert codes == [201] + [409] * 7, codes
    assert db.scalar("SELECT count(*) FROM profile") == 3


def test_upsert_resolves_by_external_id_before_email_before_phone(api, db):
    by_external = create(api, external_id="cust-1")
    by_email = create(api, email="grace@example.com")
    by_phone = create(api, phone="+31612345678")

    # external_id wins: this is cust-1, and it gains a first name
    response = api.post("/v1/profiles/upsert", json={"external_id": "cust-1", "first_name": "Ada"})
    assert response.status_code == 200
    assert response.json()["id"] == by_external["id"]

    # email before phone: the phone is new, so it is added to the email's profile
    response = api.post(
        "/v1/profiles/upsert", json={"email": "grace@example.com", "phone": "+31687654321"}
    )
    assert (response.status_code, response.json()["id"]) == (200, by_email["id"])
    assert response.json()["phone"] == "+31687654321"

    # phone before anonymous_id: the anonymous id is attached to the phone's profile
    response = api.post(
        "/v1/profiles/upsert", json={"phone": "+31 6 12345678", "anonymous_id": "anon-1"}
    )
    assert (response.status_code, response.json()["id"]) == (200, by_phone["id"])
    assert response.json()["anonymous_id"] == "anon-1"

    # When identifiers name different profiles, the higher one resolves and the lower conflicts.
    for body, field in (
        ({"external_id": "cust-1", "email": "grace@example.com"}, "email"),
        ({"phone": "+31612345678", "email": "grace@example.com"}, "phone"),
        ({"anonymous_id": "anon-1", "phone": "+31687654321"}, "anonymous_id"),
    ):
        response = api.post("/v1/profiles/upsert", json=body)
        assert response.status_code == 409, body
        assert response.json()["errors"][0]["field"] == field, body
    assert db.scalar("SELECT count(*) FROM profile") == 3


def test_upsert_merges_an_anonymous_profile_when_it_is_identified(api, db):
    anonymous = api.post("/v1/profiles/upsert", json={"anonymous_id": "anon-1"}).json()
    response = api.post(
        "/v1/profiles/upsert", json={"anonymous_id": "anon-1", "email": "ada@example.com"}
    )
    assert response.status_code == 200
    assert response.json()["id"] == anonymous["id"]
    assert response.json()["email"] == "ada@example.com"


def test_upsert_with_an_identifier_of_another_profile_is_409_and_changes_nothing(api, db):
    create(api, external_id="cust-1", email="ada@example.com")
    grace = create(api, external_id="cust-2", email="grace@example.com", phone="+31612345678")
    before = snapshot(db)
    response = api.post(
        "/v1/profiles/upsert",
        json={"external_id": "cust-1", "phone": "+31612345678", "first_name": "Changed"},
    )
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "identity_conflict"
    assert body["errors"][0]["field"] == "phone"
    assert grace["id"] in body["errors"][0]["reason"]
    assert snapshot(db) == before


def test_upsert_removes_properties_sent_as_null(api, db):
    create(api, email="ada@example.com", properties={"plan": "gold", "size": 38})
    response = api.post(
        "/v1/profiles/upsert",
        json={"email": "ada@example.com", "properties": {"plan": None, "city": "Leiden"}},
    )
    assert response.json()["properties"] == {"size": 38, "city": "Leiden"}


def test_upsert_without_any_identifier_is_422(api, db):
    response = api.post("/v1/profiles/upsert", json={"first_name": "Nobody"})
    assert response.status_code == 422
    assert "at least one of external_id" in response.json()["errors"][0]["reason"]
    assert db.scalar("SELECT count(*) FROM profile") == 0


# ---- get ---------------------------------------------------------------------------------------


def test_get_includes_consent_and_metric_totals(api, db):
    ada = create(api, **ADA)
    api.put(f"/v1/profiles/{ada['id']}/consent/email", json={"status": "subscribed"})
    first, last = datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC)
    with session_scope(db.engine) as session:
        metric = session.exec(select(Metric).where(Metric.name == "Placed Order")).one()
        session.add(
            ProfileMetricStat(
                profile_id=ada["id"],
                metric_id=metric.id,
                count=2,
                total_value=150.5,
                first_at=first,
                last_at=last,
            )
        )
    response = api.get(f"/v1/profiles/{ada['id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["email"] == "ada@example.com"
    assert body["consent"]["email"] == "subscribed"
    assert body["consent"]["sms"] == "never_subscribed"
    placed = body["metrics"]["Placed Order"]
    assert (placed["count"], placed["total_value"]) == (2, 150.5)
    assert datetime.fromisoformat(placed["first_at"]) == first
    assert datetime.fromisoformat(placed["last_at"]) == last


def test_get_profile_without_activity_has_empty_metrics(api, db):
    ada = create(api, email="ada@example.com")
    assert api.get(f"/v1/profiles/{ada['id']}").json()["metrics"] == {}


def test_get_unknown_profile_is_404(api, db):
    response = api.get("/v1/profiles/prf_nope")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# ---- patch -------------------------------------------------------------------------------------


def test_patch_changes_only_the_fields_sent(api, db):
    ada = create(api, **ADA)
    response = api.patch(f"/v1/profiles/{ada['id']}", json={"first_name": "Augusta"})
    assert response.status_code == 200
    body = response.json()
    assert body["first_name"] == "Augusta"
    for name in ("external_id", "email", "phone", "last_name", "timezone", "push_tokens"):
        assert body[name] == ada[name], name
    assert body["properties"] == ada["properties"]
    assert datetime.fromisoformat(body["updated_at"]) > datetime.fromisoformat(ada["updated_at"])


def test_patch_merges_properties_and_removes_those_set_to_null(api, db):
    ada = create(api, **ADA)
    response = api.patch(
        f"/v1/profiles/{ada['id']}",
        json={"properties": {"plan": None, "city": "Leiden", "shoe_size": 39}},
    )
    assert response.json()["properties"] == {"shoe_size": 39, "city": "Leiden"}
    profile = api.get(f"/v1/profiles/{ada['id']}").json()
    assert profile["properties"] == {"shoe_size": 39, "city": "Leiden"}


def test_patch_setting_an_attribute_to_null_clears_it(api, db):
    ada = create(api, **ADA)
    response = api.patch(
        f"/v1/profiles/{ada['id']}",
        json={"first_name": None, "timezone": None, "push_tokens": None},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["first_name"], body["timezone"], body["push_tokens"]) == (None, None, [])
    assert body["last_name"] == "Lovelace"
    assert db.scalar("SELECT first_name FROM profile") is None


def test_patch_normalises_and_changes_identifiers(api, db):
    ada = create(api, **ADA)
    response = api.patch(
        f"/v1/profiles/{ada['id']}", json={"email": "ADA@Lovelace.org", "phone": None}
    )
    assert response.status_code == 200
    assert (response.json()["email"], response.json()["phone"]) == ("ada@lovelace.org", None)
    # Setting an identifier to the value it already has is not a conflict with itself.
    again = api.patch(f"/v1/profiles/{ada['id']}", json={"email": "ada@lovelace.org"})
    assert again.status_code == 200


def test_patch_to_another_profiles_identifier_is_409_and_changes_nothing(api, db):
    ada = create(api, **ADA)
    grace = create(
        api,
        external_id="cust-2",
        email="grace@example.com",
        phone="+31687654321",
        anonymous_id="anon-2",
    )
    before = snapshot(db)
    for change, field in (
        ({"email": "GRACE@example.com"}, "email"),
        ({"phone": "+31 6 8765 4321"}, "phone"),
        ({"external_id": "cust-2"}, "external_id"),
        ({"anonymous_id": "anon-2"}, "anonymous_id"),
    ):
        response = api.patch(f"/v1/profiles/{ada['id']}", json={**change, "first_name": "X"})
        assert response.status_code == 409, change
        body = response.json()
        assert body["code"] == "identity_conflict"
        assert body["errors"][0]["field"] == field
        assert grace["id"] in body["errors"][0]["reason"]
    assert snapshot(db) == before


def test_patch_removing_the_last_identifier_is_422_and_changes_nothing(api, db):
    ada = create(api, email="ada@example.com", first_name="Ada")
    before = snapshot(db)
    response = api.patch(f"/v1/profiles/{ada['id']}", json={"email": None, "first_name": "X"})
    assert response.status_code == 422
    assert fields(response) == ["identity"]
    assert snapshot(db) == before


def test_patch_with_bad_input_names_the_field_and_changes_nothing(api, db):
    ada = create(api, **ADA)
    before = snapshot(db)
    for change, field in (
        ({"email": "not-an-email"}, "email"),
        ({"phone": "12345"}, "phone"),
        ({"timezone": "Mars/Base"}, "timezone"),
        ({"external_id": ""}, "external_id"),
        ({"properties": "gold"}, "properties"),
        ({"push_tokens": [f"t{i}" for i in range(21)]}, "push_tokens"),
    ):
        response = api.patch(f"/v1/profiles/{ada['id']}", json={**change, "last_name": "X"})
        assert response.status_code == 422, change
        assert field in fields(response), (change, response.json())
    assert snapshot(db) == before


def test_patch_unknown_profile_is_404(api, db):
    response = api.patch("/v1/profiles/prf_nope", json={"first_name": "X"})
    assert response.status_code == 404
    assert db.scalar("SELECT count(*) FROM profile") == 0


# ---- delete ------------------------------------------------------------------------------------


def test_delete_removes_the_profile_and_everything_about_it(api, ingest, db):
    ada = create(api, **ADA)
    grace = create(api, email="grace@example.com")
    event = {"metric": "Placed Order", "profile": {"email": "ada@example.com"}, "value": 10}
    assert ingest.post("/v1/events", json=event).status_code == 202
    api.put(f"/v1/profiles/{ada['id']}/consent/email", json={"status": "subscribed"})
    vip = api.post("/v1/lists", json={"name": "VIP"}).json()
    api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [ada["id"], grace["id"]]})

    response = api.delete(f"/v1/profiles/{ada['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert api.get(f"/v1/profiles/{ada['id']}").status_code == 404
    assert api.delete(f"/v1/profiles/{ada['id']}").status_code == 404
    for table in ("event", "consent", "consent_change", "list_membership", "routing_outbox"):
        count = db.scalar(f"SELECT count(*) FROM {table} WHERE profile_id = :id", id=ada["id"])
        assert count == 0, table
    # The other profile and the list itself are untouched.
    assert db.scalar("SELECT count(*) FROM profile") == 1
    assert api.get(f"/v1/lists/{vip['id']}").json()["member_count"] == 1


# ---- list --------------------------------------------------------------------------------------


def test_list_pages_with_a_cursor_oldest_first(api, db):
    ids = [create(api, email=f"p{i}@example.com")["id"] for i in range(5)]
    first = api.get("/v1/profiles", params={"limit": 2}).json()
    second = api.get("/v1/profiles", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = api.get("/v1/profiles", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    seen = [p["id"] for page in (first, second, third) for p in page["data"]]
    assert seen == sorted(ids)  # ids are time-ordered: oldest first
    assert third["next_cursor"] is None
    exact = api.get("/v1/profiles", params={"limit": 5}).json()
    assert len(exact["data"]) == 5 and exact["next_cursor"] is None


def test_list_filters_by_identifier_normalising_the_value(api, db):
    ada = create(api, **ADA)
    create(api, email="grace@example.com", phone="+31687654321", external_id="cust-2")
    for params in (
        {"email": "ADA@example.com"},
        {"phone": "+31 6 12345678"},
        {"external_id": "cust-1"},
    ):
        data = api.get("/v1/profiles", params=params).json()["data"]
        assert [p["id"] for p in data] == [ada["id"]], params
    assert api.get("/v1/profiles", params={"email": "nobody@example.com"}).json()["data"] == []


def test_list_filters_by_list_and_by_subscribed_channel(api, db):
    ada = create(api, **ADA)
    grace = create(api, email="grace@example.com", phone="+31687654321")
    create(api, email="linus@example.com")
    vip = api.post("/v1/lists", json={"name": "VIP"}).json()
    api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [ada["id"], grace["id"]]})
    api.put(f"/v1/profiles/{ada['id']}/consent/sms", json={"status": "subscribed"})
    api.put(f"/v1/profiles/{grace['id']}/consent/sms", json={"status": "subscribed"})
    api.put(f"/v1/profiles/{grace['id']}/consent/sms", json={"status": "unsubscribed"})

    def ids(**params) -> list[str]:
        response = api.get("/v1/profiles", params=params)
        assert response.status_code == 200, response.text
        return [p["id"] for p in response.json()["data"]]

    assert ids(list_id=vip["id"]) == sorted([ada["id"], grace["id"]])
    assert ids(subscribed="sms") == [ada["id"]]
    assert ids(subscribed="email") == []
    assert ids(list_id=vip["id"], subscribed="sms") == [ada["id"]]
    assert ids(list_id="lst_unknown") == []


def test_list_with_a_bad_filter_is_422_naming_it(api, db):
    for params, field in (
        ({"email": "not-an-email"}, "email"),
        ({"phone": "12345"}, "phone"),
        ({"email": "ada@example.com", "phone": "12345"}, "phone"),
        ({"subscribed": "fax"}, "subscribed"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
    ):
        response = api.get("/v1/profiles", params=params)
        assert response.status_code == 422, params
        assert [f.rpartition(".")[2] for f in fields(response)] == [field], response.json()


# ---- consent -----------------------------------------------------------------------------------


def test_subscribe_and_unsubscribe_are_recorded_with_history(api, db):
    ada = create(api, **ADA)
    url = f"/v1/profiles/{ada['id']}/consent"
    response = api.put(f"{url}/email", json={"status": "subscribed", "source": "signup_form"})
    assert response.status_code == 200
    assert response.json()["channel"] == "email"
    assert response.json()["status"] == "subscribed"
    assert response.json()["source"] == "signup_form"
    assert response.json()["updated_at"] is not None
    api.put(f"{url}/sms", json={"status": "subscribed"})
    api.put(f"{url}/email", json={"status": "unsubscribed", "source": "unsubscribe_link"})

    consent = api.get(url).json()
    current = {c["channel"]: (c["status"], c["source"]) for c in consent["channels"]}
    assert current == {
        "email": ("unsubscribed", "unsubscribe_link"),
        "sms": ("subscribed", "api"),
        "whatsapp": ("never_subscribed", None),
        "push": ("never_subscribed", None),
    }
    history = [(h["channel"], h["status"], h["source"]) for h in consent["history"]]
    assert history == [
        ("email", "subscribed", "signup_form"),
        ("sms", "subscribed", "api"),
        ("email", "unsubscribed", "unsubscribe_link"),
    ]
    assert api.get(f"/v1/profiles/{ada['id']}").json()["consent"]["email"] == "unsubscribed"
    assert db.scalar("SELECT count(*) FROM consent") == 2


def test_subscribing_a_channel_without_its_address_is_422_on_status(api, db):
    with_email = create(api, email="ada@example.com")
    with_phone = create(api, phone="+31612345678")
    for channel, profile, need in (
        ("sms", with_email, "phone number"),
        ("whatsapp", with_email, "phone number"),
        ("push", with_email, "push token"),
        ("email", with_phone, "email address"),
    ):
        url = f"/v1/profiles/{profile['id']}/consent/{channel}"
        response = api.put(url, json={"status": "subscribed"})
        assert response.status_code == 422, channel
        [error] = response.json()["errors"]
        assert error["field"] == "status" and need in error["reason"], error
    assert db.scalar("SELECT count(*) FROM consent") == 0
    assert db.scalar("SELECT count(*) FROM consent_change") == 0


def test_concurrent_first_consent_changes_all_succeed(api, db):
    statuses = ("subscribed", "unsubscribed")
    for attempt in range(3):
        ada = create(api, email=f"ada{attempt}@example.com")
        url = f"/v1/profiles/{ada['id']}/consent/email"
        codes = concurrently(lambda i, url=url: api.put(url, json={"status": statuses[i % 2]}))
        assert codes == [200] * 8, codes
        history = api.get(f"/v1/profiles/{ada['id']}/consent").json()["history"]
        assert len(history) == 8
    assert db.scalar("SELECT count(*) FROM consent") == 3


def test_unsubscribing_needs_no_address(api, db):
    ada = create(api, email="ada@example.com")
    response = api.put(f"/v1/profiles/{ada['id']}/consent/sms", json={"status": "unsubscribed"})
    assert response.status_code == 200
    assert db.scalar("SELECT status FROM consent WHERE channel = 'sms'") == "unsubscribed"


def test_push_can_be_subscribed_once_the_profile_has_a_token(api, db):
    ada = create(api, email="ada@example.com")
    url = f"/v1/profiles/{ada['id']}/consent/push"
    assert api.put(url, json={"status": "subscribed"}).status_code == 422
    api.patch(f"/v1/profiles/{ada['id']}", json={"push_tokens": ["fcm-token"]})
    assert api.put(url, json={"status": "subscribed"}).status_code == 200


def test_bad_consent_change_is_422_and_stores_nothing(api, db):
    ada = create(api, **ADA)
    for channel, body, field in (
        ("fax", {"status": "subscribed"}, "channel"),
        ("email", {"status": "never_subscribed"}, "status"),
        ("email", {"status": "maybe"}, "status"),
        ("email", {}, "status"),
        ("email", {"status": "subscribed", "source": ""}, "source"),
    ):
        response = api.put(f"/v1/profiles/{ada['id']}/consent/{channel}", json=body)
        assert response.status_code == 422, (channel, body)
        assert [f.rpartition(".")[2] for f in fields(response)] == [field], response.json()
    assert db.scalar("SELECT count(*) FROM consent") == 0
    assert db.scalar("SELECT count(*) FROM consent_change") == 0


def test_consent_of_unknown_profile_is_404(api, db):
    assert api.get("/v1/profiles/prf_nope/consent").status_code == 404
    response = api.put("/v1/profiles/prf_nope/consent/email", json={"status": "unsubscribed"})
    assert response.status_code == 404
    assert db.scalar("SELECT count(*) FROM consent") == 0


def test_upsert_refuses_to_replace_an_external_id_it_did_not_match_on(api, db):
    first = api.post("/v1/profiles", json={"external_id": "u-1", "email": "a@x.co"}).json()
    response = api.post("/v1/profiles/upsert", json={"external_id": "u-2", "email": "a@x.co"})
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "external_id"
    assert db.scalar("SELECT external_id FROM profile WHERE id = :id", id=first["id"]) == "u-1"
    # Matched on external_id, a new email is the same person changing address.
    moved = api.post("/v1/profiles/upsert", json={"external_id": "u-1", "email": "b@x.co"})
    assert moved.status_code == 200 and moved.json()["email"] == "b@x.co"
