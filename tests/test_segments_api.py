"""Segments through the API: CRUD, draft/live, previews, members, and clear 422s."""

from datetime import UTC, datetime, timedelta


def created(response) -> dict:
    assert response.status_code == 201, response.text
    return response.json()


def errors(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


def profile(api, email: str, **fields) -> str:
    return created(api.post("/v1/profiles", json={"email": email, **fields}))["id"]


def order(ingest, email: str, value: float, days_ago: float, unique: str) -> None:
    at = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
    body = {
        "metric": "Placed Order",
        "profile": {"email": email},
        "value": value,
        "time": at,
        "unique_id": unique,
    }
    assert ingest.post("/v1/events", json=body).status_code == 202


def one(condition: dict) -> dict:
    return {"all_of": [{"any_of": [condition]}]}


BIG_SPENDERS = {
    "all_of": [
        {
            "any_of": [
                {
                    "type": "metric",
                    "metric": "Placed Order",
                    "operator": "at_least",
                    "count": 2,
                    "timeframe": {"type": "last_days", "days": 30},
                    "filters": [
                        {
                            "property": "$value",
                            "value_type": "number",
                            "operator": "gt",
                            "value": 100,
                        }
                    ],
                }
            ]
        },
        {
            "any_of": [
                {"type": "property", "property": "country", "operator": "equals", "value": "NL"},
                {
                    "type": "property",
                    "property": "vip",
                    "value_type": "boolean",
                    "operator": "is_true",
                },
            ]
        },
    ]
}


def shop(api, ingest) -> dict[str, str]:
    ids = {
        "ann": profile(api, "ann@example.com", properties={"country": "NL"}),
        "bob": profile(api, "bob@example.com", properties={"vip": True}),
        "cid": profile(api, "cid@example.com", properties={"country": "NL"}),
        "dan": profile(api, "dan@example.com", properties={"country": "BE", "vip": "yes"}),
    }
    for name in ("ann", "bob", "dan"):
        order(ingest, f"{name}@example.com", 150, 3, f"{name}-1")
        order(ingest, f"{name}@example.com", 250, 10, f"{name}-2")
    order(ingest, "cid@example.com", 150, 3, "cid-1")
    order(ingest, "cid@example.com", 50, 4, "cid-2")  # too small to count
    order(ingest, "cid@example.com", 500, 45, "cid-3")  # too long ago
    return ids


def test_a_segment_is_created_in_draft_with_its_members_computed(api, ingest, db):
    ids = shop(api, ingest)
    segment = created(
        api.post("/v1/segments", json={"name": "Big spenders", "definition": BIG_SPENDERS})
    )
    assert segment["id"].startswith("seg_")
    assert (segment["status"], segment["member_count"], segment["version"]) == ("draft", 2, 1)
    listed = api.get(f"/v1/segments/{segment['id']}/members").json()["data"]
    assert sorted(p["id"] for p in listed) == sorted([ids["ann"], ids["bob"]])
    # Saving a definition announces nothing: no "added to segment" flow may start from it.
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE kind LIKE 'segment%'") == 0


def test_preview_counts_and_samples_without_saving(api, ingest, db):
    ids = shop(api, ingest)
    response = api.post("/v1/segments/preview", json={"definition": BIG_SPENDERS, "sample_size": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2 and len(body["sample"]) == 1
    assert body["sample"][0] in (ids["ann"], ids["bob"])
    assert db.scalar("SELECT count(*) FROM segment") == 0


def test_changing_the_definition_recomputes_and_bumps_the_version(api, ingest, db):
    ids = shop(api, ingest)
    segment = created(api.post("/v1/segments", json={"name": "S", "definition": BIG_SPENDERS}))
    dutch = one({"type": "property", "property": "country", "operator": "equals", "value": "NL"})
    response = api.patch(f"/v1/segments/{segment['id']}", json={"definition": dutch})
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["member_count"]) == (2, 2)
    members = api.get(f"/v1/segments/{segment['id']}/members").json()["data"]
    assert sorted(p["id"] for p in members) == sorted([ids["ann"], ids["cid"]])
    renamed = api.patch(f"/v1/segments/{segment['id']}", json={"name": "Dutch"}).json()
    assert (renamed["name"], renamed["version"]) == ("Dutch", 2)


def test_status_goes_live_and_back_and_delete_removes_it(api, db):
    segment = created(
        api.post(
            "/v1/segments",
            json={"name": "S", "definition": one({"type": "consent", "channel": "sms"})},
        )
    )
    url = f"/v1/segments/{segment['id']}"
    assert api.post(f"{url}/status", json={"status": "live"}).json()["status"] == "live"
    assert api.get("/v1/segments").json()["data"][0]["status"] == "live"
    assert api.post(f"{url}/status", json={"status": "draft"}).json()["status"] == "draft"
    assert "status" in errors(api.post(f"{url}/status", json={"status": "paused"}))
    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404


def test_an_operator_that_does_not_fit_the_type_is_422_naming_it(api, db):
    bad = one(
        {
            "type": "property",
            "property": "age",
            "value_type": "number",
            "operator": "contains",
            "value": 3,
        }
    )
    found = errors(api.post("/v1/segments", json={"name": "S", "definition": bad}))
    field = "definition.all_of[0].any_of[0].operator"
    assert "not valid for type 'number'" in found[field]
    assert db.scalar("SELECT count(*) FROM segment") == 0


def test_a_value_of_the_wrong_type_is_422_naming_it(api, db):
    bad = one(
        {
            "type": "property",
            "property": "age",
            "value_type": "number",
            "operator": "gt",
            "value": "x",
        }
    )
    found = errors(api.post("/v1/segments", json={"name": "S", "definition": bad}))
    assert found["definition.all_of[0].any_of[0].value"] == "must be a number"


def test_unknown_metric_and_list_are_422(api, db):
    definition = {
        "all_of": [
            {"any_of": [{"type": "metric", "metric": "Nope"}]},
            {"any_of": [{"type": "in_list", "list_id": "lst_missing"}]},
            {
                "any_of": [
                    {"type": "journey", "run_kind": "flow", "run_id": "flw_x", "result": "stopped"}
                ]
            },
        ]
    }
    found = errors(api.post("/v1/segments", json={"name": "S", "definition": definition}))
    assert "unknown metric 'Nope'" in found["definition.all_of[0].any_of[0].metric"]
    assert found["definition.all_of[1].any_of[0].list_id"] == "no list has id 'lst_missing'"
    assert found["definition.all_of[2].any_of[0].run_id"] == "no flow has id 'flw_x'"
    preview = api.post("/v1/segments/preview", json={"definition": definition})
    assert "definition.all_of[0].any_of[0].metric" in errors(preview)


def test_an_empty_definition_and_unknown_segment_are_clear(api, db):
    found = errors(api.post("/v1/segments", json={"name": "S", "definition": {"all_of": []}}))
    assert "definition.all_of" in found
    assert api.get("/v1/segments/seg_nope").status_code == 404
    assert api.patch("/v1/segments/seg_nope", json={"name": "x"}).status_code == 404


# ---- incremental membership through routing ----------------------------------------------------


def route(db) -> None:
    """What the router does with the outbox, with only the segment handler."""
    from activities.routing import RouterActivities
    from activities.segment_routing import SegmentRoutingHandler

    router = RouterActivities(db.engine, [SegmentRoutingHandler()])
    while router.route_once():
        pass  # one batch per call: route until the outbox is empty


def announced(db, segment_id: str) -> list[tuple[str, str]]:
    return [
        tuple(r)
        for r in db.rows(
            "SELECT kind, profile_id FROM routing_outbox WHERE segment_id = :s ORDER BY id",
            s=segment_id,
        )
    ]


def live(api, definition: dict) -> str:
    segment = created(api.post("/v1/segments", json={"name": "S", "definition": definition}))
    assert api.post(f"/v1/segments/{segment['id']}/status", json={"status": "live"}).is_success
    return segment["id"]


def member_ids(api, segment_id: str) -> set[str]:
    return {p["id"] for p in api.get(f"/v1/segments/{segment_id}/members").json()["data"]}


def test_profile_changes_move_members_and_announce_it(api, db):
    vip = live(
        api,
        one(
            {"type": "property", "property": "vip", "value_type": "boolean", "operator": "is_true"}
        ),
    )
    ann = profile(api, "ann@example.com")
    route(db)
    assert member_ids(api, vip) == set()
    assert api.patch(f"/v1/profiles/{ann}", json={"properties": {"vip": True}}).is_success
    route(db)
    assert member_ids(api, vip) == {ann}
    assert announced(db, vip) == [("segment_added", ann)]
    assert api.patch(f"/v1/profiles/{ann}", json={"properties": {"vip": None}}).is_success
    route(db)
    assert member_ids(api, vip) == set()
    assert announced(db, vip)[-1] == ("segment_removed", ann)
    assert api.get(f"/v1/segments/{vip}").json()["member_count"] == 0


def test_consent_and_list_changes_move_members(api, db):
    subscribers = live(api, one({"type": "consent", "channel": "email", "status": "subscribed"}))
    list_id = created(api.post("/v1/lists", json={"name": "VIP"}))["id"]
    outside = live(api, one({"type": "in_list", "list_id": list_id, "member": False}))
    ann = profile(api, "ann@example.com")
    route(db)
    assert member_ids(api, outside) == {ann}
    api.put(f"/v1/profiles/{ann}/consent/email", json={"status": "subscribed"})
    api.post(f"/v1/lists/{list_id}/members", json={"profile_ids": [ann]})
    route(db)
    assert member_ids(api, subscribers) == {ann}
    assert member_ids(api, outside) == set()
    api.put(f"/v1/profiles/{ann}/consent/email", json={"status": "unsubscribed"})
    api.post(f"/v1/lists/{list_id}/members/remove", json={"profile_ids": [ann]})
    route(db)
    assert member_ids(api, subscribers) == set()
    assert member_ids(api, outside) == {ann}


def test_events_move_members_and_draft_segments_announce_nothing(api, ingest, db):
    definition = one({"type": "metric", "metric": "Placed Order", "count": 2})
    order(ingest, "ann@example.com", 10, 1, "a-1")
    draft = created(api.post("/v1/segments", json={"name": "D", "definition": definition}))["id"]
    repeat = live(api, definition)
    route(db)
    order(ingest, "ann@example.com", 10, 1, "a-2")
    route(db)
    ann = db.scalar("SELECT id FROM profile WHERE email = 'ann@example.com'")
    assert member_ids(api, repeat) == {ann}
    # Routing leaves drafts alone (one can be expensive to re-check); going live recomputes it.
    assert member_ids(api, draft) == set()
    assert announced(db, repeat) == [("segment_added", ann)]
    assert announced(db, draft) == []


def test_a_flow_trigger_on_a_draft_segment_is_422_until_it_is_live(api, db):
    segment = created(
        api.post(
            "/v1/segments",
            json={"name": "S", "definition": one({"type": "consent", "channel": "email"})},
        )
    )
    flow = {
        "name": "Welcome",
        "trigger": {"type": "segment", "segment_id": segment["id"]},
        "steps": [
            {
                "id": "hi",
                "type": "message",
                "channel": "email",
                "content": {"subject": "Hi", "body": "Hi"},
            }
        ],
    }
    found = errors(api.post("/v1/flows", json=flow))
    assert found["trigger.segment_id"] == f"segment {segment['id']!r} is a draft: set it live first"
    api.post(f"/v1/segments/{segment['id']}/status", json={"status": "live"})
    response = api.post("/v1/flows", json=flow)
    assert response.status_code == 201, response.text
