"""Static lists: CRUD, all-or-nothing membership changes, and the "added to list" announcement."""


def make_profiles(api, count: int) -> list[str]:
    ids = []
    for i in range(count):
        response = api.post("/v1/profiles", json={"email": f"p{i}@example.com"})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def make_list(api, name: str = "VIP", **extra) -> dict:
    response = api.post("/v1/lists", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def members(api, list_id: str, **params) -> list[str]:
    response = api.get(f"/v1/lists/{list_id}/members", params=params)
    assert response.status_code == 200, response.text
    return [p["id"] for p in response.json()["data"]]


def outbox(db) -> list[tuple]:
    """The outbox rows, sorted (rows written by one call have no meaningful order)."""
    return sorted(
        tuple(row)
        for row in db.rows(
            "SELECT kind, profile_id, list_id, event_id FROM routing_outbox"
            " WHERE kind <> 'profile_changed'"
        )
    )


# ---- CRUD --------------------------------------------------------------------------------------


def test_create_and_get_a_list(api, db):
    created = make_list(api, "Newsletter", description="Weekly news")
    assert created["id"].startswith("lst_")
    assert (created["name"], created["description"], created["member_count"]) == (
        "Newsletter",
        "Weekly news",
        0,
    )
    fetched = api.get(f"/v1/lists/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created
    assert db.scalar("SELECT name FROM profile_list") == "Newsletter"


def test_create_with_bad_input_names_the_field_and_stores_nothing(api, db):
    for body, field in (
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "VIP", "description": "x" * 2001}, "description"),
        ({"name": 42}, "name"),
    ):
        response = api.post("/v1/lists", json=body)
        assert response.status_code == 422, body
        assert [e["field"] for e in response.json()["errors"]] == [field], response.json()
    assert db.scalar("SELECT count(*) FROM profile_list") == 0


def test_lists_page_oldest_first_with_member_counts(api, db):
    [p1, p2] = make_profiles(api, 2)
    lists = [make_list(api, f"L{i}") for i in range(3)]
    api.post(f"/v1/lists/{lists[1]['id']}/members", json={"profile_ids": [p1, p2]})
    first = api.get("/v1/lists", params={"limit": 2}).json()
    second = api.get("/v1/lists", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    rows = first["data"] + second["data"]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in lists)
    assert {row["name"]: row["member_count"] for row in rows} == {"L0": 0, "L1": 2, "L2": 0}
    assert second["next_cursor"] is None


def test_patch_renames_and_keeps_what_was_not_sent(api, db):
    vip = make_list(api, "VIP", description="Best customers")
    response = api.patch(f"/v1/lists/{vip['id']}", json={"name": "VIP 2026"})
    assert response.status_code == 200
    assert response.json()["name"] == "VIP 2026"
    assert response.json()["description"] == "Best customers"
    response = api.patch(f"/v1/lists/{vip['id']}", json={"description": ""})
    assert (response.json()["name"], response.json()["description"]) == ("VIP 2026", "")
    assert db.rows("SELECT name, description FROM profile_list") == [("VIP 2026", "")]


def test_patch_with_bad_input_names_the_field_and_changes_nothing(api, db):
    vip = make_list(api, "VIP", description="Best customers")
    for body, field in (
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"description": None, "name": "Renamed"}, "description"),
        ({"description": "x" * 2001}, "description"),
    ):
        response = api.patch(f"/v1/lists/{vip['id']}", json=body)
        assert response.status_code == 422, body
        assert [e["field"] for e in response.json()["errors"]] == [field], response.json()
    assert db.rows("SELECT name, description FROM profile_list") == [("VIP", "Best customers")]


def test_delete_removes_the_list_and_its_memberships_but_not_the_profiles(api, db):
    [p1, p2] = make_profiles(api, 2)
    vip = make_list(api)
    other = make_list(api, "Other")
    api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p1, p2]})
    api.post(f"/v1/lists/{other['id']}/members", json={"profile_ids": [p1]})
    response = api.delete(f"/v1/lists/{vip['id']}")
    assert response.status_code == 204
    assert api.get(f"/v1/lists/{vip['id']}").status_code == 404
    assert api.delete(f"/v1/lists/{vip['id']}").status_code == 404
    assert db.scalar("SELECT count(*) FROM list_membership WHERE list_id = :id", id=vip["id"]) == 0
    assert db.scalar("SELECT count(*) FROM profile") == 2
    assert api.get(f"/v1/lists/{other['id']}").json()["member_count"] == 1


def test_unknown_list_is_404(api, db):
    [p1] = make_profiles(api, 1)
    for method, path, body in (
        ("GET", "", None),
        ("PATCH", "", {"name": "X"}),
        ("DELETE", "", None),
        ("GET", "/members", None),
        ("POST", "/members", {"profile_ids": [p1]}),
        ("POST", "/members/remove", {"profile_ids": [p1]}),
    ):
        response = api.request(method, f"/v1/lists/lst_nope{path}", json=body)
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "not_found"
    assert db.scalar("SELECT count(*) FROM list_membership") == 0
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE kind <> 'profile_changed'") == 0


# ---- membership --------------------------------------------------------------------------------


def test_adding_members_announces_each_new_membership_once(api, db):
    [p1, p2, p3] = make_profiles(api, 3)
    vip = make_list(api)
    response = api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p1, p2]})
    assert response.status_code == 200, response.text
    assert response.json() == {"changed": 2, "unchanged": 0}
    # p1 again, p3 new, p3 twice in one call: only p3 is added and announced.
    response = api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p1, p3, p3]})
    assert response.json() == {"changed": 1, "unchanged": 1}
    assert members(api, vip["id"]) == sorted([p1, p2, p3])
    assert api.get(f"/v1/lists/{vip['id']}").json()["member_count"] == 3
    assert outbox(db) == sorted(("list_added", p, vip["id"], None) for p in (p1, p2, p3))


def test_re_adding_all_members_changes_nothing(api, db):
    [p1, p2] = make_profiles(api, 2)
    vip = make_list(api)
    api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p1, p2]})
    response = api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p2, p1]})
    assert response.json() == {"changed": 0, "unchanged": 2}
    assert db.scalar("SELECT count(*) FROM list_membership") == 2
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE kind <> 'profile_changed'") == 2


def test_being_added_again_after_removal_is_announced_again(api, db):
    [p1] = make_profiles(api, 1)
    vip = make_list(api)
    url = f"/v1/lists/{vip['id']}/members"
    api.post(url, json={"profile_ids": [p1]})
    api.post(f"{url}/remove", json={"profile_ids": [p1]})
    api.post(url, json={"profile_ids": [p1]})
    assert outbox(db) == [("list_added", p1, vip["id"], None)] * 2


def test_one_unknown_profile_rejects_the_whole_add(api, db):
    [p1, p2] = make_profiles(api, 2)
    vip = make_list(api)
    response = api.post(
        f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p1, "prf_ghost", p2]}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "profile_ids"
    assert "prf_ghost" in error["reason"] and p1 not in error["reason"]
    assert db.scalar("SELECT count(*) FROM list_membership") == 0
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE kind <> 'profile_changed'") == 0


def test_malformed_member_change_is_422_on_profile_ids(api, db):
    vip = make_list(api)
    for body in ({}, {"profile_ids": []}, {"profile_ids": "prf_x"}, {"profile_ids": [1, 2]}):
        for path in ("members", "members/remove"):
            response = api.post(f"/v1/lists/{vip['id']}/{path}", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["errors"][0]["field"].startswith("profile_ids")
    assert db.scalar("SELECT count(*) FROM list_membership") == 0


def test_more_than_1000_profiles_per_call_is_refused_whole(api, db):
    [p1] = make_profiles(api, 1)
    vip = make_list(api)
    response = api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p1] * 1001})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["profile_ids"]
    assert db.scalar("SELECT count(*) FROM list_membership") == 0


def test_exactly_1000_ids_per_call_is_accepted(api, db):
    [p1] = make_profiles(api, 1)
    vip = make_list(api)
    response = api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p1] * 1000})
    assert response.json() == {"changed": 1, "unchanged": 0}


def test_removing_members(api, db):
    [p1, p2, p3] = make_profiles(api, 3)
    vip = make_list(api)
    url = f"/v1/lists/{vip['id']}/members"
    api.post(url, json={"profile_ids": [p1, p2]})
    response = api.post(f"{url}/remove", json={"profile_ids": [p1, p3]})
    assert response.status_code == 200
    assert response.json() == {"changed": 1, "unchanged": 1}
    assert members(api, vip["id"]) == [p2]
    # The profile itself is kept, and nothing is announced for a removal.
    assert api.get(f"/v1/profiles/{p1}").status_code == 200
    assert db.scalar("SELECT count(*) FROM routing_outbox WHERE kind <> 'profile_changed'") == 2


def test_removing_an_unknown_profile_changes_nothing(api, db):
    [p1] = make_profiles(api, 1)
    vip = make_list(api)
    url = f"/v1/lists/{vip['id']}/members"
    api.post(url, json={"profile_ids": [p1]})
    response = api.post(f"{url}/remove", json={"profile_ids": [p1, "prf_ghost"]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "profile_ids"
    assert members(api, vip["id"]) == [p1]


def test_members_page_in_profile_id_order(api, db):
    ids = make_profiles(api, 5)
    vip = make_list(api)
    api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": list(reversed(ids))})
    first = api.get(f"/v1/lists/{vip['id']}/members", params={"limit": 3}).json()
    assert "consent" in first["data"][0]
    second = api.get(
        f"/v1/lists/{vip['id']}/members", params={"limit": 3, "cursor": first["next_cursor"]}
    ).json()
    assert [p["id"] for p in first["data"] + second["data"]] == sorted(ids)
    assert second["next_cursor"] is None


def test_membership_is_per_list(api, db):
    [p1, p2] = make_profiles(api, 2)
    vip, other = make_list(api, "VIP"), make_list(api, "Other")
    api.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": [p1]})
    api.post(f"/v1/lists/{other['id']}/members", json={"profile_ids": [p1, p2]})
    api.post(f"/v1/lists/{other['id']}/members/remove", json={"profile_ids": [p1]})
    assert members(api, vip["id"]) == [p1]
    assert members(api, other["id"]) == [p2]
