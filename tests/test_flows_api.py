"""Flows through the API: validation with every problem at once, versions, status, delete."""

from concurrent.futures import ThreadPoolExecutor


def email(step_id: str, next_id: str | None = None, subject: str = "Thanks!") -> dict:
    return {
        "id": step_id,
        "type": "message",
        "channel": "email",
        "content": {"subject": subject, "body": "Hi {{ profile.first_name | default: 'there' }}"},
        "next": next_id,
    }


def definition(**overrides) -> dict:
    """Post-purchase: thank-you now, review request after 7 days; exit on a new checkout."""
    return {
        "trigger": {"type": "metric", "metric": "Placed Order"},
        "exit_metric": "Started Checkout",
        "steps": [
            email("thanks", "wait"),
            {"id": "wait", "type": "time_delay", "amount": 7, "unit": "days", "next": "review"},
            email("review", subject="How was it?"),
        ],
        **overrides,
    }


def create_flow(api, name: str = "Post-purchase", **body) -> dict:
    response = api.post("/v1/flows", json={"name": name, **definition(), **body})
    assert response.status_code == 201, response.text
    return response.json()


def make_list(api, name: str = "VIP") -> str:
    response = api.post("/v1/lists", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def errors(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


def versions(db, flow_id: str) -> list[int]:
    rows = db.rows(
        "SELECT version FROM flow_version WHERE flow_id = :id ORDER BY version", id=flow_id
    )
    return [v for (v,) in rows]


# ---- create and read ---------------------------------------------------------------------------


def test_create_stores_version_one_and_what_routing_matches_on(api, db):
    created = create_flow(api)
    assert created["id"].startswith("fl_")
    assert {k: created[k] for k in ("name", "status", "version")} == {
        "name": "Post-purchase",
        "status": "draft",
        "version": 1,
    }
    assert (created["trigger_type"], created["trigger_key"], created["exit_metric"]) == (
        "metric",
        "Placed Order",
        "Started Checkout",
    )
    assert [s["id"] for s in created["definition"]["steps"]] == ["thanks", "wait", "review"]
    assert versions(db, created["id"]) == [1]
    assert db.rows("SELECT trigger_type, trigger_key, exit_metric, latest_version FROM flow") == [
        ("metric", "Placed Order", "Started Checkout", 1)
    ]
    assert api.get(f"/v1/flows/{created['id']}").json() == created


def test_trigger_key_is_the_list_id_or_the_date_property(api, db):
    vip = make_list(api)
    by_list = create_flow(api, "Welcome VIP", trigger={"type": "list", "list_id": vip})
    birthday = create_flow(
        api,
        "Birthday",
        status="live",
        trigger={"type": "date_property", "property": "birthday", "offset_days": -3},
        exit_metric=None,
    )
    assert (by_list["trigger_type"], by_list["trigger_key"]) == ("list", vip)
    assert (birthday["trigger_type"], birthday["trigger_key"]) == ("date_property", "birthday")
    assert (birthday["status"], birthday["exit_metric"]) == ("live", None)


def test_an_invalid_definition_is_refused_with_every_problem_naming_the_step(api, db):
    body = definition(
        trigger={"type": "metric", "metric": "Never Happened"},
        steps=[
            email("thanks", "split", subject="Hi {{ profile.first_name"),
            {
                "id": "split",
                "type": "conditional_split",
                "conditions": [{"type": "in_list", "list_id": "lst_gone"}],
                "yes": "wait",
                "no": "vip_offer",
            },
            {"id": "wait", "type": "time_delay", "amount": 2, "unit": "days", "next": "thanks"},
            {"id": "orphan", "type": "time_delay", "amount": 400, "unit": "days"},
            {"id": "hook", "type": "webhook", "url": "ftp://example.com"},
        ],
    )
    response = api.post("/v1/flows", json={"name": "Broken", **body})
    found = errors(response)
    assert response.json()["code"] == "validation_error"
    assert set(found) == {
        "trigger.metric",
        "steps[0] (thanks).content.subject",
        "steps[1] (split).conditions[0].list_id",
        "steps[1] (split).no",
        "steps[2] (wait).next",
        "steps[3] (orphan)",
        "steps[3] (orphan).amount",
        "steps[4] (hook)",
        "steps[4] (hook).url",
    }
    assert found["steps[1] (split).no"] == "no step has id 'vip_offer'"
    assert "cycle" in found["steps[2] (wait).next"]
    assert "unreachable" in found["steps[3] (orphan)"]
    assert "9 problem(s)" in response.json()["message"]
    assert db.scalar("SELECT count(*) FROM flow") == 0
    assert db.scalar("SELECT count(*) FROM flow_version") == 0


def test_a_trigger_on_an_unknown_segment_is_422(api, db):
    response = api.post(
        "/v1/flows",
        json={"name": "Win-back", **definition(trigger={"type": "segment", "segment_id": "s1"})},
    )
    assert errors(response)["trigger.segment_id"] == "no segment has id 's1'"


def test_malformed_input_is_422_naming_the_field(api, db):
    for body, field in (
        ({**definition()}, "name"),
        ({"name": "", **definition()}, "name"),
        ({"name": "X", **definition(), "status": "paused"}, "status"),
        ({"name": "X", **definition(), "colour": "red"}, "colour"),
        ({"name": "X", **definition(steps=[])}, "steps"),
        ({"name": "X", **definition(trigger={"type": "cron"})}, "trigger"),
        ({"name": "X", **definition(steps=[{"id": "a", "type": "teleport"}])}, "steps.0"),
        ({"name": "X", **definition(steps=[{"id": "a b", "type": "exit"}])}, "steps.0.exit.id"),
    ):
        response = api.post("/v1/flows", json=body)
        assert response.status_code == 422, (body, response.text)
        fields = [e["field"] for e in response.json()["errors"]]
        assert any(f.startswith(field) for f in fields), (field, fields)
    # PostgreSQL cannot store NUL: refused up front, wherever it is in the definition.
    nul = definition(steps=[email("thanks", subject="Hi\x00")])
    response = api.post("/v1/flows", json={"name": "X", **nul})
    assert response.status_code == 422
    assert "steps[0].content.subject contains a NUL" in response.json()["errors"][0]["reason"]
    assert db.scalar("SELECT count(*) FROM flow") == 0


def test_flows_page_oldest_first_filter_by_status_and_hide_deleted(api, db):
    flows = [create_flow(api, f"F{i}", status="live" if i % 2 else "draft") for i in range(5)]
    first = api.get("/v1/flows", params={"limit": 2}).json()
    rest = api.get("/v1/flows", params={"limit": 10, "cursor": first["next_cursor"]}).json()
    # Ids are time-ordered; two flows created in the same millisecond may come in either order.
    assert [f["id"] for f in first["data"] + rest["data"]] == sorted(f["id"] for f in flows)
    assert rest["next_cursor"] is None
    assert "definition" not in first["data"][0]
    live = api.get("/v1/flows", params={"status": "live"}).json()["data"]
    assert sorted(f["name"] for f in live) == ["F1", "F3"]
    assert api.delete(f"/v1/flows/{flows[1]['id']}").status_code == 204
    live = api.get("/v1/flows", params={"status": "live"}).json()["data"]
    assert [f["name"] for f in live] == ["F3"]
    assert api.get("/v1/flows", params={"status": "paused"}).status_code == 422


def test_unknown_flow_is_404_everywhere(api, db):
    for method, path, body in (
        ("GET", "", None),
        ("PATCH", "", {"name": "X"}),
        ("PUT", "/definition", definition()),
        ("DELETE", "", None),
        ("GET", "/versions", None),
        ("GET", "/versions/1", None),
        ("GET", "/enrollments", None),
        ("GET", "/review-queue", None),
        ("GET", "/report", None),
    ):
        response = api.request(method, f"/v1/flows/fl_nope{path}", json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == "not_found"


# ---- name and status ---------------------------------------------------------------------------


def test_patch_renames_and_changes_status_without_a_new_version(api, db):
    flow = create_flow(api)
    response = api.patch(f"/v1/flows/{flow['id']}", json={"name": "Thank-you series"})
    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["status"]) == ("Thank-you series", "draft")
    for status in ("manual", "live", "draft"):
        response = api.patch(f"/v1/flows/{flow['id']}", json={"status": status})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status
    assert response.json()["version"] == 1
    assert response.json()["definition"] == flow["definition"]
    assert versions(db, flow["id"]) == [1]
    assert db.rows("SELECT name, status FROM flow") == [("Thank-you series", "draft")]


def test_patch_with_bad_input_names_the_field_and_changes_nothing(api, db):
    flow = create_flow(api)
    for body, field in (
        ({"name": None}, "name"),
        ({"status": None}, "status"),
        ({"status": "paused"}, "status"),
        ({"name": ""}, "name"),
        ({"definition": definition()}, "definition"),
    ):
        response = api.patch(f"/v1/flows/{flow['id']}", json=body)
        assert response.status_code == 422, (body, response.text)
        assert [e["field"] for e in response.json()["errors"]] == [field], response.json()
    assert db.rows("SELECT name, status FROM flow") == [("Post-purchase", "draft")]


def test_going_live_rechecks_the_definition_against_todays_lists(api, db):
    vip = make_list(api)
    flow = create_flow(api, steps=[{"id": "join", "type": "add_to_list", "list_id": vip}])
    assert api.delete(f"/v1/lists/{vip}").status_code == 204
    for status in ("live", "manual"):
        response = api.patch(f"/v1/flows/{flow['id']}", json={"status": status})
        assert errors(response) == {"steps[0] (join).list_id": f"no list has id {vip!r}"}
    assert db.scalar("SELECT status FROM flow") == "draft"
    # Renaming a draft does not need a valid definition.
    assert api.patch(f"/v1/flows/{flow['id']}", json={"name": "Renamed"}).status_code == 200


# ---- versions ----------------------------------------------------------------------------------


def test_replacing_the_definition_stores_new_versions_and_keeps_old_ones(api, db):
    flow = create_flow(api, status="live")
    url = f"/v1/flows/{flow['id']}"
    v2 = definition(exit_metric="Placed Order")
    v3 = definition(
        trigger={"type": "metric", "metric": "Started Checkout"},
        exit_metric=None,
        steps=[email("nudge")],
    )
    for expected, body in ((2, v2), (3, v3)):
        response = api.put(f"{url}/definition", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == expected
    current = api.get(url).json()
    assert current["version"] == 3
    assert (current["trigger_key"], current["exit_metric"]) == ("Started Checkout", None)
    assert [s["id"] for s in current["definition"]["steps"]] == ["nudge"]
    assert current["status"] == "live"

    listed = api.get(f"{url}/versions").json()
    assert [v["version"] for v in listed["data"]] == [1, 2, 3]
    assert listed["data"][0]["definition"] == flow["definition"]
    assert api.get(f"{url}/versions/2").json()["definition"]["exit_metric"] == "Placed Order"
    assert api.get(f"{url}/versions/4").status_code == 404
    assert versions(db, flow["id"]) == [1, 2, 3]
    assert db.rows("SELECT trigger_key, exit_metric, latest_version FROM flow") == [
        ("Started Checkout", None, 3)
    ]


def test_an_unchanged_definition_makes_no_new_version(api, db):
    delay = {
        "id": "wait",
        "type": "time_delay",
        "amount": 2,
        "unit": "days",
        "at_time": "09:00",
        "weekdays": [4, 0, 2],
        "next": "review",
    }
    flow = create_flow(api, steps=[email("thanks", "wait"), delay, email("review")])
    # The same definition spelled differently: defaults explicit, times and weekdays reordered.
    same = definition(
        steps=[
            email("thanks", "wait"),
            {**delay, "at_time": "09:00:00", "weekdays": [0, 2, 4]},
            email("review"),
        ],
        filters=[],
        reentry={"mode": "once"},
        entry=None,
    )
    response = api.put(f"/v1/flows/{flow['id']}/definition", json=same)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    assert versions(db, flow["id"]) == [1]


def test_an_invalid_replacement_changes_nothing(api, db):
    flow = create_flow(api)
    response = api.put(
        f"/v1/flows/{flow['id']}/definition",
        json=definition(steps=[email("a", "b"), email("b", "a")]),
    )
    assert set(errors(response)) == {"steps[1] (b).next"}
    response = api.put(f"/v1/flows/{flow['id']}/definition", json={"steps": [email("a")]})
    assert [e["field"] for e in response.json()["errors"]] == ["trigger"]
    assert versions(db, flow["id"]) == [1]
    assert api.get(f"/v1/flows/{flow['id']}").json() == flow


def test_concurrent_edits_each_get_their_own_version(api, db):
    flow = create_flow(api)

    def edit(i: int) -> int:
        body = definition(steps=[email("thanks", subject=f"Thanks #{i}")])
        response = api.put(f"/v1/flows/{flow['id']}/definition", json=body)
        assert response.status_code == 200, response.text
        return response.json()["version"]

    with ThreadPoolExecutor(6) as pool:
        got = sorted(pool.map(edit, range(6)))
    assert got == [2, 3, 4, 5, 6, 7]
    assert versions(db, flow["id"]) == [1, 2, 3, 4, 5, 6, 7]


def test_versions_page_oldest_first(api, db):
    flow = create_flow(api)
    for i in range(4):
        body = definition(steps=[email("thanks", subject=f"v{i + 2}")])
        api.put(f"/v1/flows/{flow['id']}/definition", json=body)
    url = f"/v1/flows/{flow['id']}/versions"
    first = api.get(url, params={"limit": 3}).json()
    rest = api.get(url, params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [v["version"] for v in first["data"] + rest["data"]] == [1, 2, 3, 4, 5]
    assert rest["next_cursor"] is None
    assert api.get(url, params={"cursor": "bm9wZQ"}).status_code == 422


# ---- delete ------------------------------------------------------------------------------------


def test_delete_is_soft_and_final(api, db):
    flow = create_flow(api, status="live")
    url = f"/v1/flows/{flow['id']}"
    response = api.delete(url)
    assert response.status_code == 204
    assert response.content == b""
    for method, path, body in (
        ("GET", "", None),
        ("DELETE", "", None),
        ("PATCH", "", {"status": "draft"}),
        ("PUT", "/definition", definition()),
        ("GET", "/versions", None),
    ):
        assert api.request(method, f"{url}{path}", json=body).status_code == 404, (method, path)
    # Kept for history (enrollments reference it), marked deleted.
    assert db.scalar("SELECT count(*) FROM flow WHERE deleted_at IS NOT NULL") == 1
    assert versions(db, flow["id"]) == [1]
