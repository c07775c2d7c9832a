"""Input PostgreSQL cannot store (NUL, lone surrogates, NaN/Infinity) and lax types are 422s.

Every case names the field, in the API's one error shape, on both backends; nothing is stored.
"""

import json

import pytest

NUL = "a%00b"  # percent-encoded, so it reaches the app as a NUL character

# (method, url, JSON body or None, the field the 422 must name)
NUL_IN_PATH_OR_QUERY = [
    ("GET", f"/v1/profiles/{NUL}", None, "path.profile_id"),
    ("PATCH", f"/v1/profiles/{NUL}", {"first_name": "A"}, "path.profile_id"),
    ("GET", f"/v1/profiles/{NUL}/consent", None, "path.profile_id"),
    ("PUT", f"/v1/profiles/{NUL}/consent/email", {"status": "subscribed"}, "path.profile_id"),
    ("GET", f"/v1/profiles?external_id={NUL}", None, "query.external_id"),
    ("GET", f"/v1/profiles?list_id={NUL}", None, "query.list_id"),
    ("GET", f"/v1/events?profile_id={NUL}", None, "query.profile_id"),
    ("GET", f"/v1/events?metric={NUL}", None, "query.metric"),
    ("GET", f"/v1/lists/{NUL}", None, "path.list_id"),
    ("PATCH", f"/v1/lists/{NUL}", {"name": "X"}, "path.list_id"),
    ("DELETE", f"/v1/lists/{NUL}", None, "path.list_id"),
    ("GET", f"/v1/lists/{NUL}/members", None, "path.list_id"),
    ("POST", f"/v1/lists/{NUL}/members", {"profile_ids": ["p"]}, "path.list_id"),
    ("POST", f"/v1/lists/{NUL}/members/remove", {"profile_ids": ["p"]}, "path.list_id"),
    ("GET", f"/v1/flows/{NUL}", None, "path.flow_id"),
    ("GET", f"/v1/flows/{NUL}/versions", None, "path.flow_id"),
    ("GET", f"/v1/flows/{NUL}/enrollments", None, "path.flow_id"),
    ("GET", f"/v1/flows/flw_x/enrollments?profile_id={NUL}", None, "query.profile_id"),
    ("GET", f"/v1/flows/flw_x/enrollments?step={NUL}", None, "query.step"),
    ("GET", f"/v1/enrollments/{NUL}", None, "path.workflow_id"),
    ("GET", f"/v1/campaigns/{NUL}", None, "path.campaign_id"),
    ("GET", f"/v1/campaigns/{NUL}/report", None, "path.campaign_id"),
    ("GET", f"/v1/deliveries?profile_id={NUL}", None, "query.profile_id"),
    ("GET", f"/v1/deliveries?run_id={NUL}", None, "query.run_id"),
    ("GET", f"/v1/deliveries?step_id={NUL}", None, "query.step_id"),
    ("GET", f"/v1/segments/{NUL}", None, "path.segment_id"),
    ("GET", f"/v1/segments/{NUL}/members", None, "path.segment_id"),
]

# Cursors that decode to NUL ("AA" is base64 of one zero byte).
NUL_CURSORS = ["/v1/profiles?cursor=AA", "/v1/lists?cursor=AA", "/v1/segments?cursor=AA"]


def assert_names_field(response, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert field in [e["field"] for e in body["errors"]], body


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    NUL_IN_PATH_OR_QUERY,
    ids=[f"{m} {u}" for m, u, _, _ in NUL_IN_PATH_OR_QUERY],
)
def test_nul_in_a_path_or_query_parameter_is_a_422_naming_it(api, db, method, url, body, field):
    response = api.request(method, url, json=body)
    assert_names_field(response, field)
    assert "NUL" in response.json()["errors"][0]["reason"]


ORDER = {"metric": "Placed Order", "profile": {"email": "h@example.com"}}

# Raw JSON text: NaN, Infinity and "\ud800" are what a careless JSON encoder emits, and httpx's
# own encoder would refuse or re-encode them.
HOSTILE_PROPERTY_VALUES = {
    "nan": "NaN",
    "infinity": "Infinity",
    "minus_infinity": "-Infinity",
    "overflow": "1e999",
    "lone_surrogate": '"\\ud800"',
    "nul": '"a\\u0000b"',
}


def post_raw(client, url: str, text: str):
    return client.post(url, content=text, headers={"content-type": "application/json"})


@pytest.mark.parametrize("raw", HOSTILE_PROPERTY_VALUES.values(), ids=HOSTILE_PROPERTY_VALUES)
def test_unstorable_event_property_is_a_422_naming_it(ingest, db, raw):
    text = json.dumps(ORDER)[:-1] + f', "properties": {{"cart": {{"items": [1, {raw}]}}}}}}'
    response = post_raw(ingest, "/v1/events", text)
    assert_names_field(response, "properties.cart.items[1]")
    assert db.scalar("SELECT count(*) FROM event") == 0


@pytest.mark.parametrize("raw", HOSTILE_PROPERTY_VALUES.values(), ids=HOSTILE_PROPERTY_VALUES)
def test_unstorable_profile_property_is_a_422_naming_it(api, db, raw):
    text = f'{{"email": "h@example.com", "properties": {{"score": {raw}}}}}'
    response = post_raw(api, "/v1/profiles", text)
    assert_names_field(response, "properties.score")
    assert db.scalar("SELECT count(*) FROM profile") == 0


def test_lone_surrogate_in_a_property_name_is_a_422(api, db):
    response = post_raw(
        api, "/v1/profiles", '{"email": "h@example.com", "properties": {"\\udc00": 1}}'
    )
    assert response.status_code == 422, response.text
    assert db.scalar("SELECT count(*) FROM profile") == 0


# Strings that reach PostgreSQL text columns, wherever they sit in a body.
NUL_IN_BODY = [
    ("POST", "/v1/profiles", {"email": "h@example.com", "first_name": "A\x00"}, "first_name"),
    ("POST", "/v1/lists", {"name": "V\x00IP"}, "name"),
    ("POST", "/v1/lists/lst_x/members", {"profile_ids": ["p\x00"]}, "profile_ids[0]"),
    ("POST", "/v1/lists/lst_x/members/remove", {"profile_ids": ["p\x00"]}, "profile_ids[0]"),
    ("POST", "/v1/segments", {"name": "S\x00", "definition": {}}, "name"),
    ("PATCH", "/v1/account", {"name": "Shop\x00"}, "name"),
]


@pytest.mark.parametrize(
    ("method", "url", "body", "field"), NUL_IN_BODY, ids=[f"{m} {u}" for m, u, _, _ in NUL_IN_BODY]
)
def test_nul_in_a_body_string_is_a_422_naming_it(api, db, method, url, body, field):
    assert_names_field(api.request(method, url, json=body), field)


def test_nul_in_an_event_metric_is_a_422_naming_it(ingest, db):
    response = ingest.post("/v1/events", json={**ORDER, "metric": "Placed\x00Order"})
    assert_names_field(response, "metric")
    assert db.scalar("SELECT count(*) FROM event") == 0


def test_nul_in_list_members_is_a_422_when_the_list_exists(api, db):
    list_id = api.post("/v1/lists", json={"name": "VIP"}).json()["id"]
    for url in (f"/v1/lists/{list_id}/members", f"/v1/lists/{list_id}/members/remove"):
        response = api.post(url, json={"profile_ids": ["prf_1", "prf\x002"]})
        assert_names_field(response, "profile_ids[1]")


def test_one_unstorable_event_in_a_batch_is_rejected_alone(ingest, db):
    good = json.dumps({**ORDER, "unique_id": "good"})
    bad = json.dumps({**ORDER, "unique_id": "bad"})[:-1] + ', "properties": {"total": NaN}}'
    response = post_raw(ingest, "/v1/events/batch", f'{{"events": [{good}, {bad}]}}')
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    [rejected] = [r for r in body["results"] if r["status"] == "rejected"]
    assert rejected["index"] == 1
    assert rejected["errors"][0]["field"] == "events[1].properties.total"
    assert db.scalar("SELECT count(*) FROM event") == 1


# ---- strict numbers ---------------------------------------------------------------------------


@pytest.fixture
def account(api):
    before = api.get("/v1/account").json()
    yield before
    assert api.patch("/v1/account", json=before).status_code == 200


@pytest.mark.parametrize("hours", [False, True, "24", 24.5])
def test_smart_sending_hours_must_be_a_whole_number_not_a_boolean(api, db, account, hours):
    response = api.patch("/v1/account", json={"smart_sending_hours": {"email": hours}})
    assert_names_field(response, "smart_sending_hours.email")
    assert api.get("/v1/account").json() == account


def test_frequency_caps_must_be_whole_numbers_not_booleans(api, db, account):
    response = api.patch("/v1/account", json={"frequency_caps": {"email": {"per_day": True}}})
    assert_names_field(response, "frequency_caps.email.per_day")
    assert api.get("/v1/account").json() == account


def test_a_raw_control_character_is_invalid_json_reported_on_the_body(api, db):
    response = post_raw(api, "/v1/lists", '{"name": "V\x00IP"}')
    assert_names_field(response, "body")
    assert "not valid JSON" in response.json()["errors"][0]["reason"]


@pytest.mark.parametrize("url", NUL_CURSORS)
def test_a_cursor_that_decodes_to_nul_is_a_422_naming_it(api, db, url):
    assert_names_field(api.get(url), "cursor")


@pytest.mark.parametrize("path", ["/v1/events", "/v1/outbox", "/v1/routing/dead-letters"])
def test_a_cursor_that_is_not_an_ascii_number_is_a_422_naming_it(api, path):
    from api.pagination import encode_cursor

    response = api.get(path, params={"cursor": encode_cursor("²")})
    assert_names_field(response, "cursor")
