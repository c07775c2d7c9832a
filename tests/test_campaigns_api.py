"""Campaigns through the API: drafts, limits, review, scheduling, locks, reports.

The shared `running_api` has no Temporal behind it, so scheduling there answers 503; the
scheduled and sent states are set in the database to test the locks, and one test schedules
for real against the Temporal dev server.
"""

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from api.app import create_app
from herald.core import search_attributes as sa
from herald.core.config import Settings
from herald.core.db import session_scope
from herald.core.ids import new_id
from models.campaigns import CampaignExit
from models.delivery import Delivery
from tests.conftest import serve

SNEAKERS = "Hi {{ profile.first_name | default: 'there' }}, the drop is live. Unsubscribe: {{ x }}"


def wall(days: float = 7, zone: str = "Europe/Amsterdam", hour: int | None = 9) -> str:
    """A local wall time `days` from now in `zone` ("YYYY-MM-DDTHH:MM")."""
    at = datetime.now(ZoneInfo(zone)) + timedelta(days=days)
    if hour is not None:
        at = at.replace(hour=hour, minute=0)
    return at.strftime("%Y-%m-%dT%H:%M")


def created(response: httpx.Response) -> dict:
    assert response.status_code == 201, response.text
    return response.json()


def errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


def campaign(api, **body) -> dict:
    body = {"name": "Sneaker drop", "timezone": "Europe/Amsterdam", **body}
    return created(api.post("/v1/campaigns", json=body))


def path(api, campaign_id: str, **body) -> dict:
    return created(api.post(f"/v1/campaigns/{campaign_id}/paths", json=body))


def email_body(**overrides) -> dict:
    return {
        "channel": "email",
        "content": {"subject": "Early access", "body": SNEAKERS, "sender": "shop@example.com"},
        "send_at": wall(1),
        **overrides,
    }


def message(api, campaign_id: str, path_id: str, **body) -> dict:
    url = f"/v1/campaigns/{campaign_id}/paths/{path_id}/messages"
    return created(api.post(url, json=email_body(**body)))


def audience(api, name: str, *emails: str) -> str:
    list_id = created(api.post("/v1/lists", json={"name": name}))["id"]
    ids = [created(api.post("/v1/profiles", json={"email": e}))["id"] for e in emails]
    if ids:
        response = api.post(f"/v1/lists/{list_id}/members", json={"profile_ids": ids})
        assert response.status_code == 200, response.text
    return list_id


def ready_campaign(api, **body) -> tuple[dict, dict, dict]:
    """A campaign that passes review: one path over a list of two, one email."""
    customers = audience(api, "Customers", "ada@example.com", "grace@example.com")
    c = campaign(api, **body)
    p = path(api, c["id"], name="Everyone", include_lists=[customers])
    m = message(api, c["id"], p["id"])
    return c, p, m


def set_status(db, campaign_id: str, status: str, started: bool = False) -> None:
    db.execute(
        "UPDATE campaign SET status = :s, started_at = :at WHERE id = :id",
        s=status,
        at=datetime.now(UTC).replace(tzinfo=None) if started else None,
        id=campaign_id,
    )
    message_status = "sending" if started else status
    db.execute(
        "UPDATE campaign_message SET status = :s WHERE campaign_id = :id",
        s=message_status,
        id=campaign_id,
    )


# ---- campaigns ---------------------------------------------------------------------------------


def test_a_new_campaign_is_a_draft_in_the_account_timezone(api, db):
    body = created(api.post("/v1/campaigns", json={"name": "Drop", "tags": ["launch", "launch"]}))
    assert body["id"].startswith("cmp_")
    assert {k: body[k] for k in ("status", "timezone", "local_time", "exit_metric", "paths")} == {
        "status": "draft",
        "timezone": "UTC",
        "local_time": False,
        "exit_metric": None,
        "paths": [],
    }
    assert body["tags"] == ["launch"]
    assert body["past_time_policy"] == "immediately"
    assert api.get(f"/v1/campaigns/{body['id']}").json() == body


def test_campaigns_page_oldest_first_and_filter_by_status(api, db):
    ids = [campaign(api, name=f"C{i}")["id"] for i in range(3)]
    set_status(db, ids[1], "scheduled")
    first = api.get("/v1/campaigns", params={"limit": 2}).json()
    assert [c["id"] for c in first["data"]] == ids[:2]
    rest = api.get("/v1/campaigns", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert ([c["id"] for c in rest["data"]], rest["next_cursor"]) == (ids[2:], None)
    scheduled = api.get("/v1/campaigns", params={"status": "scheduled"}).json()["data"]
    assert [c["id"] for c in scheduled] == [ids[1]]
    assert api.get("/v1/campaigns", params={"status": "paused"}).status_code == 422


def test_get_shows_paths_in_order_and_messages_in_send_time_order(api, db):
    c = campaign(api)
    vip = path(api, c["id"], name="VIP")
    rest = path(api, c["id"])
    later = message(api, c["id"], vip["id"], send_at=wall(2))
    sooner = message(
        api, c["id"], vip["id"], send_at=wall(1), channel="sms", content={"body": "Hi"}
    )
    got = api.get(f"/v1/campaigns/{c['id']}").json()
    assert [(p["id"], p["name"], p["position"]) for p in got["paths"]] == [
        (vip["id"], "VIP", 0),
        (rest["id"], "Path 2", 1),
    ]
    assert [m["id"] for m in got["paths"][0]["messages"]] == [sooner["id"], later["id"]]
    assert sooner["content"] == {
        "subject": None,
        "body": "Hi",
        "sender": None,
        "text": None,
        "sender_name": None,
        "reply_to": None,
        "whatsapp_template": None,
    }
    assert sooner["schedule"] == {"mode": "fixed", "percent_per_hour": None}
    assert (sooner["smart_sending"], sooner["utm"], sooner["status"]) == (True, True, "draft")


def test_unknown_ids_are_404(api, db):
    c = campaign(api)
    p = path(api, c["id"])
    m = message(api, c["id"], p["id"])
    other = path(api, campaign(api)["id"])
    for method, url in (
        ("GET", "/v1/campaigns/cmp_nope"),
        ("GET", "/v1/campaigns/cmp_nope/review"),
        ("PATCH", f"/v1/campaigns/{c['id']}/paths/cpa_nope"),
        ("PATCH", f"/v1/campaigns/{c['id']}/paths/{other['id']}"),  # another campaign's path
        ("DELETE", f"/v1/campaigns/{c['id']}/paths/{p['id']}/messages/cms_nope"),
        ("DELETE", f"/v1/campaigns/{c['id']}/paths/{other['id']}/messages/{m['id']}"),
    ):
        response = api.request(method, url, json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, url, response.text)


def test_patch_changes_details_and_send_settings_of_a_draft(api, db):
    c = campaign(api)
    response = api.patch(
        f"/v1/campaigns/{c['id']}",
        json={
            "name": "Sneaker drop v2",
            "color": "#ff6600",
            "timezone": "America/New_York",
            "local_time": True,
            "past_time_policy": "next_day",
            "exit_metric": "Placed Order",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["color"], body["timezone"]) == (
        "Sneaker drop v2",
        "#ff6600",
        "America/New_York",
    )
    assert (body["local_time"], body["past_time_policy"], body["exit_metric"]) == (
        True,
        "next_day",
        "Placed Order",
    )
    off = api.patch(f"/v1/campaigns/{c['id']}", json={"exit_metric": None, "color": None})
    assert (off.json()["exit_metric"], off.json()["color"]) == (None, None)
    assert "timezone" in errors(api.patch(f"/v1/campaigns/{c['id']}", json={"timezone": "Mars"}))
    assert "name" in errors(api.patch(f"/v1/campaigns/{c['id']}", json={"name": None}))
    assert "past_time_policy" in errors(
        api.patch(f"/v1/campaigns/{c['id']}", json={"past_time_policy": "never"})
    )


def test_a_custom_conversion_metric_is_422_naming_exit_metric(api, db, ingest):
    accepted = ingest.post(
        "/v1/events", json={"metric": "Watched Unboxing", "profile": {"email": "a@example.com"}}
    )
    assert accepted.status_code in (200, 202), accepted.text  # the custom metric now exists
    for name in ("Watched Unboxing", "Made Up Metric"):
        found = errors(api.post("/v1/campaigns", json={"name": "Drop", "exit_metric": name}))
        assert list(found) == ["exit_metric"]
        assert "built-in" in found["exit_metric"]
    c = campaign(api)
    assert "exit_metric" in errors(
        api.patch(f"/v1/campaigns/{c['id']}", json={"exit_metric": "Watched Unboxing"})
    )
    assert db.scalar("SELECT count(*) FROM campaign") == 1


def test_delete_only_a_draft_or_cancelled_campaign(api, db):
    c, p, _ = ready_campaign(api)
    set_status(db, c["id"], "scheduled")
    refused = api.delete(f"/v1/campaigns/{c['id']}")
    assert refused.status_code == 409
    assert "only draft or cancelled" in refused.json()["message"]
    set_status(db, c["id"], "cancelled")
    assert api.delete(f"/v1/campaigns/{c['id']}").status_code == 204
    assert api.get(f"/v1/campaigns/{c['id']}").status_code == 404
    assert db.scalar("SELECT count(*) FROM campaign_path") == 0
    assert db.scalar("SELECT count(*) FROM campaign_message") == 0
    draft = campaign(api)
    assert api.delete(f"/v1/campaigns/{draft['id']}").status_code == 204


# ---- paths -------------------------------------------------------------------------------------


def test_the_eleventh_path_is_422_saying_the_limit(api, db):
    c = campaign(api)
    for _ in range(10):
        path(api, c["id"])
    found = errors(api.post(f"/v1/campaigns/{c['id']}/paths", json={}))
    assert "at most 10 paths" in found["paths"]
    assert db.scalar("SELECT count(*) FROM campaign_path") == 10


def test_an_unknown_list_is_422_naming_the_field_and_index(api, db):
    vip = audience(api, "VIP")
    c = campaign(api)
    found = errors(
        api.post(f"/v1/campaigns/{c['id']}/paths", json={"include_lists": [vip, "lst_gone"]})
    )
    assert found == {"include_lists[1]": "no list has id 'lst_gone'"}
    p = path(api, c["id"], include_lists=[vip])
    found = errors(
        api.patch(f"/v1/campaigns/{c['id']}/paths/{p['id']}", json={"exclude_lists": ["lst_x"]})
    )
    assert found == {"exclude_lists[0]": "no list has id 'lst_x'"}
    assert api.get(f"/v1/campaigns/{c['id']}").json()["paths"][0]["exclude_lists"] == []


def test_unknown_and_draft_segments_are_refused_as_audiences(api, db):
    c = campaign(api)
    found = errors(
        api.post(f"/v1/campaigns/{c['id']}/paths", json={"exclude_segments": ["seg_vip"]})
    )
    assert found == {"exclude_segments[0]": "no segment has id 'seg_vip'"}
    definition = {"all_of": [{"any_of": [{"type": "consent", "channel": "email"}]}]}
    segment = created(
        api.post("/v1/segments", json={"name": "Subscribers", "definition": definition})
    )
    body = {"include_segments": [segment["id"]]}
    found = errors(api.post(f"/v1/campaigns/{c['id']}/paths", json=body))
    assert found == {
        "include_segments[0]": f"segment {segment['id']!r} is a draft: set it live first"
    }
    api.post(f"/v1/segments/{segment['id']}/status", json={"status": "live"})
    created(api.post(f"/v1/campaigns/{c['id']}/paths", json=body))
    # In use by a draft campaign: it can neither go back to draft nor be deleted.
    assert (
        api.post(f"/v1/segments/{segment['id']}/status", json={"status": "draft"}).status_code
        == 409
    )
    assert api.delete(f"/v1/segments/{segment['id']}").status_code == 409


def test_patch_path_renames_and_changes_the_audience(api, db):
    vip, blocked = audience(api, "VIP"), audience(api, "Blocked")
    c = campaign(api)
    p = path(api, c["id"], include_lists=[vip])
    response = api.patch(
        f"/v1/campaigns/{c['id']}/paths/{p['id']}",
        json={"name": "VIPs", "exclude_lists": [blocked, blocked]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["include_lists"], body["exclude_lists"]) == (
        "VIPs",
        [vip],
        [blocked],
    )


def test_clone_path_copies_its_messages_right_after_it(api, db):
    c = campaign(api)
    first, last = path(api, c["id"], name="VIP"), path(api, c["id"], name="Rest")
    message(api, c["id"], first["id"])
    message(api, c["id"], first["id"], channel="sms", content={"body": "Hi"}, send_at=wall(2))
    copy = created(api.post(f"/v1/campaigns/{c['id']}/paths/{first['id']}/clone"))
    assert (copy["name"], copy["position"]) == ("VIP (copy)", 1)
    assert [m["channel"] for m in copy["messages"]] == ["email", "sms"]
    assert {m["path_id"] for m in copy["messages"]} == {copy["id"]}
    got = api.get(f"/v1/campaigns/{c['id']}").json()
    assert [p["id"] for p in got["paths"]] == [first["id"], copy["id"], last["id"]]
    assert [p["position"] for p in got["paths"]] == [0, 1, 2]
    assert db.scalar("SELECT count(*) FROM campaign_message") == 4


def test_clone_path_respects_both_limits(api, db):
    c = campaign(api)
    big = path(api, c["id"])
    for _ in range(16):
        message(api, c["id"], big["id"])
    found = errors(api.post(f"/v1/campaigns/{c['id']}/paths/{big['id']}/clone"))
    assert "at most 30 messages" in found["messages"]
    small = path(api, c["id"])
    for _ in range(8):
        created(api.post(f"/v1/campaigns/{c['id']}/paths/{small['id']}/clone"))
    found = errors(api.post(f"/v1/campaigns/{c['id']}/paths/{small['id']}/clone"))
    assert "at most 10 paths" in found["paths"]


def test_reorder_takes_a_permutation_of_the_paths(api, db):
    c = campaign(api)
    a, b, z = (path(api, c["id"], name=n)["id"] for n in "abz")
    url = f"/v1/campaigns/{c['id']}/paths/reorder"
    response = api.post(url, json={"path_ids": [z, a, b]})
    assert response.status_code == 200, response.text
    assert [p["name"] for p in response.json()["paths"]] == ["z", "a", "b"]
    assert "missing" in errors(api.post(url, json={"path_ids": [z, a]}))["path_ids"]
    assert "twice" in errors(api.post(url, json={"path_ids": [z, a, a]}))["path_ids"]
    unknown = errors(api.post(url, json={"path_ids": [z, a, "cpa_x"]}))["path_ids"]
    assert "cpa_x" in unknown
    assert [p["name"] for p in api.get(f"/v1/campaigns/{c['id']}").json()["paths"]] == list("zab")


def test_deleting_a_path_deletes_its_messages_and_closes_the_gap(api, db):
    c = campaign(api)
    a, b, z = (path(api, c["id"], name=n) for n in "abz")
    message(api, c["id"], b["id"])
    assert api.delete(f"/v1/campaigns/{c['id']}/paths/{b['id']}").status_code == 204
    got = api.get(f"/v1/campaigns/{c['id']}").json()["paths"]
    assert [(p["name"], p["position"]) for p in got] == [("a", 0), ("z", 1)]
    assert db.scalar("SELECT count(*) FROM campaign_message") == 0


# ---- messages ----------------------------------------------------------------------------------


def test_the_thirty_first_message_is_422_saying_the_limit(api, db):
    c = campaign(api)
    first, second = path(api, c["id"]), path(api, c["id"])
    for i in range(30):
        message(api, c["id"], (first, second)[i % 2]["id"])
    url = f"/v1/campaigns/{c['id']}/paths/{second['id']}/messages"
    found = errors(api.post(url, json=email_body()))
    assert "at most 30 messages in total" in found["messages"]
    some = api.get(f"/v1/campaigns/{c['id']}").json()["paths"][0]["messages"][0]["id"]
    clone = f"/v1/campaigns/{c['id']}/paths/{first['id']}/messages/{some}/clone"
    assert "at most 30 messages" in errors(api.post(clone, json={}))["messages"]


def test_a_stagger_of_60_percent_is_422_naming_the_field(api, db):
    c = campaign(api)
    p = path(api, c["id"])
    url = f"/v1/campaigns/{c['id']}/paths/{p['id']}/messages"
    found = errors(
        api.post(url, json=email_body(schedule={"mode": "staggered", "percent_per_hour": 60}))
    )
    assert list(found) == ["schedule.percent_per_hour"]
    assert "50" in found["schedule.percent_per_hour"]
    assert "schedule" in errors(api.post(url, json=email_body(schedule={"mode": "staggered"})))
    for percent in (10, 50):
        body = created(
            api.post(
                url, json=email_body(schedule={"mode": "staggered", "percent_per_hour": percent})
            )
        )
        assert body["schedule"] == {"mode": "staggered", "percent_per_hour": percent}


def test_a_send_time_in_the_past_is_422_naming_send_at(api, db):
    # Three hours from now in UTC is long past in Kiritimati (UTC+14), still ahead in Pago Pago.
    soon_in_utc = (datetime.now(UTC) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    east = campaign(api, timezone="Pacific/Kiritimati")
    p = path(api, east["id"])
    url = f"/v1/campaigns/{east['id']}/paths/{p['id']}/messages"
    found = errors(api.post(url, json=email_body(send_at=soon_in_utc)))
    assert list(found) == ["send_at"]
    assert "in the past in the campaign timezone Pacific/Kiritimati" in found["send_at"]
    assert "send_at" in errors(api.post(url, json=email_body(send_at="2020-01-01T09:00")))
    west = campaign(api, timezone="Pacific/Pago_Pago")
    w = path(api, west["id"])
    message(api, west["id"], w["id"], send_at=soon_in_utc)
    # A default send time is local to Amsterdam; Kiritimati can already be past it.
    m = message(api, east["id"], p["id"], send_at=wall(2, zone="Pacific/Kiritimati"))
    patch = api.patch(f"{url}/{m['id']}", json={"send_at": "2020-01-01T09:00"})
    assert "send_at" in errors(patch)


def test_a_malformed_send_time_is_422(api, db):
    c = campaign(api)
    p = path(api, c["id"])
    url = f"/v1/campaigns/{c['id']}/paths/{p['id']}/messages"
    for value in ("2030-01-01 09:00", "2030-1-1T9:00", "2030-01-01T09:00:00Z", "tomorrow"):
        assert "send_at" in errors(api.post(url, json=email_body(send_at=value))), value


def test_staggered_sends_and_recipient_local_time_exclude_each_other(api, db):
    local = campaign(api, local_time=True)
    p = path(api, local["id"])
    url = f"/v1/campaigns/{local['id']}/paths/{p['id']}/messages"
    found = errors(
        api.post(url, json=email_body(schedule={"mode": "staggered", "percent_per_hour": 25}))
    )
    assert "cannot use recipient local time" in found["schedule"]
    fixed = campaign(api)
    q = path(api, fixed["id"])
    message(api, fixed["id"], q["id"], schedule={"mode": "staggered", "percent_per_hour": 25})
    found = errors(api.patch(f"/v1/campaigns/{fixed['id']}", json={"local_time": True}))
    assert "staggering releases a share of the path every hour" in found["local_time"]


def test_patch_message_keeps_content_fields_not_sent(api, db):
    c = campaign(api)
    p = path(api, c["id"])
    m = message(api, c["id"], p["id"])
    url = f"/v1/campaigns/{c['id']}/paths/{p['id']}/messages/{m['id']}"
    response = api.patch(
        url,
        json={
            "content": {"subject": "Last call"},
            "smart_sending": False,
            "utm": False,
            "schedule": {"mode": "staggered", "percent_per_hour": 20},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content"] == {**m["content"], "subject": "Last call"}
    assert (body["smart_sending"], body["utm"]) == (False, False)
    assert body["schedule"] == {"mode": "staggered", "percent_per_hour": 20}
    assert "channel" in errors(api.patch(url, json={"channel": "fax"}))
    assert api.delete(url).status_code == 204
    assert api.delete(url).status_code == 404


def test_clone_a_message_to_another_path(api, db):
    c = campaign(api)
    vip, rest = path(api, c["id"]), path(api, c["id"])
    m = message(api, c["id"], vip["id"], smart_sending=False)
    url = f"/v1/campaigns/{c['id']}/paths/{vip['id']}/messages/{m['id']}/clone"
    copy = created(api.post(url, json={"path_id": rest["id"]}))
    assert copy["id"] != m["id"]
    assert copy["path_id"] == rest["id"]
    assert {k: copy[k] for k in ("channel", "content", "send_at", "smart_sending")} == {
        k: m[k] for k in ("channel", "content", "send_at", "smart_sending")
    }
    same = created(api.post(url, json={}))
    assert same["path_id"] == vip["id"]
    assert api.post(url, json={"path_id": "cpa_nope"}).status_code == 404


def test_paths_and_messages_change_only_in_draft(api, db):
    c, p, m = ready_campaign(api)
    base = f"/v1/campaigns/{c['id']}/paths"
    hints = {"scheduled": "unschedule it", "sent": "can no longer change"}
    for status, hint in hints.items():
        set_status(db, c["id"], status)
        for method, url, body in (
            ("POST", base, {}),
            ("PATCH", f"{base}/{p['id']}", {"name": "x"}),
            ("DELETE", f"{base}/{p['id']}", None),
            ("POST", f"{base}/{p['id']}/clone", None),
            ("POST", f"{base}/reorder", {"path_ids": [p["id"]]}),
            ("POST", f"{base}/{p['id']}/messages", email_body()),
            ("PATCH", f"{base}/{p['id']}/messages/{m['id']}", {"utm": False}),
            ("DELETE", f"{base}/{p['id']}/messages/{m['id']}", None),
            ("POST", f"{base}/{p['id']}/messages/{m['id']}/clone", {}),
        ):
            response = api.request(method, url, json=body)
            assert response.status_code == 409, (status, method, url, response.text)
            assert f"is {status}: " in response.json()["message"]
            assert hint in response.json()["message"]
    assert db.scalar("SELECT count(*) FROM campaign_message") == 1


# ---- review ------------------------------------------------------------------------------------


def test_review_of_an_empty_campaign(api, db):
    c = campaign(api)
    review = api.get(f"/v1/campaigns/{c['id']}/review").json()
    assert review["ready"] is False
    assert [e["code"] for e in review["campaign"]["errors"]] == ["no_paths"]
    path(api, c["id"], name="Lonely")
    review = api.get(f"/v1/campaigns/{c['id']}/review").json()
    assert [(e["code"], e["field"]) for e in review["campaign"]["errors"]] == [
        ("path_without_messages", "paths[0]")
    ]


def test_review_lists_each_messages_errors(api, db):
    customers = audience(api, "Customers", "ada@example.com")
    c = campaign(api)
    empty = path(api, c["id"], name="Nobody", include_lists=[customers], exclude_lists=[customers])
    bad = message(
        api,
        c["id"],
        empty["id"],
        content={"body": "Hi {{ profile.first_name", "subject": ""},
    )
    whatsapp = message(api, c["id"], empty["id"], channel="whatsapp", content={"body": "Hi"})
    db.execute(
        "UPDATE campaign_message SET send_at_local = '2021-03-01T09:00' WHERE id = :id",
        id=bad["id"],
    )
    account = api.get("/v1/account").json()
    api.patch("/v1/account", json={"enabled_channels": ["email", "sms"]})
    try:
        review = api.get(f"/v1/campaigns/{c['id']}/review").json()
    finally:
        api.patch("/v1/account", json={"enabled_channels": account["enabled_channels"]})
    assert review["ready"] is False
    by_id = {m["message_id"]: m for m in review["messages"]}
    assert {e["code"]: e["field"] for e in by_id[bad["id"]]["errors"]} == {
        "no_subject": "content.subject",
        "send_time_past": "send_at",
        "empty_audience": "audience",
        "template_error": "content.body",
    }
    assert [e["code"] for e in by_id[whatsapp["id"]]["errors"]] == [
        "channel_not_enabled",
        "whatsapp_template_required",
        "empty_audience",
    ]
    assert by_id[whatsapp["id"]]["path_id"] == empty["id"]


def test_review_warnings_do_not_block(api, db):
    everyone = audience(api, "Everyone", "ada@example.com", "grace@example.com", "ken@example.com")
    ada_only = audience(api, "VIP")
    ada = db.scalar("SELECT id FROM profile WHERE email = 'ada@example.com'")
    api.post(f"/v1/lists/{ada_only}/members", json={"profile_ids": [ada]})
    c = campaign(api)
    vip = path(api, c["id"], name="VIP", include_lists=[ada_only])
    rest = path(api, c["id"], name="Everyone", include_lists=[everyone])
    no_link = message(api, c["id"], vip["id"], content={"subject": "Hi", "body": "Drop"})
    long_sms = message(
        api, c["id"], rest["id"], channel="sms", content={"body": "x" * 200}, utm=False
    )
    review = api.get(f"/v1/campaigns/{c['id']}/review").json()
    assert review["ready"] is True
    by_id = {m["message_id"]: m for m in review["messages"]}
    assert [w["code"] for w in by_id[no_link["id"]]["warnings"]] == ["no_unsubscribe_link"]
    assert [w["code"] for w in by_id[long_sms["id"]]["warnings"]] == [
        "sms_multiple_segments",
        "utm_off",
    ]
    [overlap] = review["campaign"]["warnings"]
    assert (overlap["code"], overlap["field"]) == ("audience_overlap", "paths[1]")
    assert "1 of the 3 profiles of path 'Everyone'" in overlap["message"]


def test_an_email_without_sender_is_an_error_when_there_is_no_default_sender(db, keys):
    settings = Settings(database_url=db.url, smtp_sender="", api_key_cache_seconds=0)
    with (
        serve(create_app(settings, engine=db.engine)) as base_url,
        httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {keys.private}"}) as api,
    ):
        customers = audience(api, "Customers", "ada@example.com")
        c = campaign(api)
        p = path(api, c["id"], include_lists=[customers])
        content = {"subject": "Drop", "body": SNEAKERS}
        m = message(api, c["id"], p["id"], content=content)
        review = api.get(f"/v1/campaigns/{c['id']}/review").json()
        assert [e["code"] for e in review["messages"][0]["errors"]] == ["no_sender"]
        url = f"/v1/campaigns/{c['id']}/paths/{p['id']}/messages/{m['id']}"
        api.patch(url, json={"content": {"sender": "shop@example.com"}})
        assert api.get(f"/v1/campaigns/{c['id']}/review").json()["ready"] is True


# ---- scheduling and locks ----------------------------------------------------------------------


def test_scheduling_is_refused_with_the_review_errors(api, db):
    c = campaign(api)
    p = path(api, c["id"], name="Nobody")
    m = message(api, c["id"], p["id"], content={"subject": "Drop", "body": ""})
    response = api.post(f"/v1/campaigns/{c['id']}/schedule")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "not_ready"
    assert {e["field"]: e["code"] for e in body["errors"]} == {
        f"messages[{m['id']}].content.body": "no_body",
        f"messages[{m['id']}].audience": "empty_audience",
    }
    assert "cannot be scheduled" in body["message"]
    assert db.rows("SELECT status FROM campaign") == [("draft",)]
    assert db.rows("SELECT status FROM campaign_message") == [("draft",)]


def test_scheduling_while_temporal_is_down_is_503_and_the_campaign_stays_a_draft(api, db):
    c, _, _ = ready_campaign(api)
    response = api.post(f"/v1/campaigns/{c['id']}/schedule")
    assert response.status_code == 503, response.text
    assert "still a draft" in response.json()["message"]
    assert db.rows("SELECT status, scheduled_at FROM campaign") == [("draft", None)]
    assert db.rows("SELECT status FROM campaign_message") == [("draft",)]


def test_only_a_draft_can_be_scheduled(api, db):
    c, _, _ = ready_campaign(api)
    set_status(db, c["id"], "scheduled")
    response = api.post(f"/v1/campaigns/{c['id']}/schedule")
    assert response.status_code == 409
    assert "only a draft can be scheduled" in response.json()["message"]


@pytest.mark.parametrize(
    "change",
    [
        {"exit_metric": "Placed Order"},
        {"timezone": "Asia/Tokyo"},
        {"local_time": True},
        {"past_time_policy": "next_day"},
    ],
)
def test_send_settings_and_exit_criteria_lock_while_scheduled(api, db, change):
    c, _, _ = ready_campaign(api)
    set_status(db, c["id"], "scheduled")
    response = api.patch(f"/v1/campaigns/{c['id']}", json=change)
    assert response.status_code == 423, response.text
    assert "unschedule it" in response.json()["message"]
    assert api.get(f"/v1/campaigns/{c['id']}").json()[next(iter(change))] == c[next(iter(change))]
    set_status(db, c["id"], "draft")
    assert api.patch(f"/v1/campaigns/{c['id']}", json=change).status_code == 200


def test_send_settings_and_exit_criteria_lock_for_good_once_a_message_was_sent(api, db):
    c, _, _ = ready_campaign(api, exit_metric="Placed Order")
    set_status(db, c["id"], "sending", started=True)
    for change in ({"exit_metric": None}, {"timezone": "UTC"}):
        response = api.patch(f"/v1/campaigns/{c['id']}", json=change)
        assert response.status_code == 409, response.text
        assert "locked permanently: messages were already sent" in response.json()["message"]
    set_status(db, c["id"], "sent", started=True)
    response = api.patch(f"/v1/campaigns/{c['id']}", json={"exit_metric": "Started Checkout"})
    assert response.status_code == 409


def test_details_stay_editable_and_unchanged_settings_pass_while_locked(api, db):
    c, _, _ = ready_campaign(api, exit_metric="Placed Order")
    set_status(db, c["id"], "sending", started=True)
    response = api.patch(
        f"/v1/campaigns/{c['id']}",
        json={
            "name": "Sneaker drop (final)",
            "description": "Spring",
            "tags": ["drop"],
            "color": "#000000",
            # The same value as now: a client sending the whole form back is not refused.
            "exit_metric": "Placed Order",
            "timezone": "Europe/Amsterdam",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Sneaker drop (final)"


def test_unschedule_is_refused_once_anything_was_sent(api, db):
    c, _, m = ready_campaign(api)
    draft = api.post(f"/v1/campaigns/{c['id']}/unschedule")
    assert draft.status_code == 409
    assert "only a scheduled campaign" in draft.json()["message"]
    set_status(db, c["id"], "sending", started=True)
    response = api.post(f"/v1/campaigns/{c['id']}/unschedule")
    assert response.status_code == 409
    assert "cancel it instead" in response.json()["message"]
    # A delivery row (even a skipped one) also counts as processed.
    set_status(db, c["id"], "scheduled")
    _deliveries(db, c["id"], m["id"], [("skipped", "no_consent")])
    assert api.post(f"/v1/campaigns/{c['id']}/unschedule").status_code == 409


def test_unschedule_while_temporal_is_down_is_503_and_stays_scheduled(api, db):
    c, _, _ = ready_campaign(api)
    set_status(db, c["id"], "scheduled")
    response = api.post(f"/v1/campaigns/{c['id']}/unschedule")
    assert response.status_code == 503, response.text
    assert "still scheduled" in response.json()["message"]
    assert db.rows("SELECT status FROM campaign") == [("scheduled",)]


def test_cancel_ends_the_campaign_and_its_remaining_messages(api, db):
    c, p, m = ready_campaign(api)
    sent = message(api, c["id"], p["id"], send_at=wall(0.5))
    set_status(db, c["id"], "sending", started=True)
    db.execute("UPDATE campaign_message SET status = 'sent' WHERE id = :id", id=sent["id"])
    response = api.post(f"/v1/campaigns/{c['id']}/cancel")  # Temporal is down: still cancelled
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["cancel_reason"]) == ("cancelled", "operator")
    assert body["finished_at"] is not None
    statuses = {x["id"]: x["status"] for x in body["paths"][0]["messages"]}
    assert statuses == {m["id"]: "cancelled", sent["id"]: "sent"}
    again = api.post(f"/v1/campaigns/{c['id']}/cancel")
    assert again.status_code == 409
    assert "is cancelled" in again.json()["message"]


# ---- reports -----------------------------------------------------------------------------------


def _deliveries(db, campaign_id: str, message_id: str, outcomes: list[tuple[str, str | None]]):
    with session_scope(db.engine) as session:
        for status, reason in outcomes:
            profile_id = new_id("prf")
            session.add(
                Delivery(
                    id=new_id("dlv"),
                    idempotency_key=f"campaign:{campaign_id}:{message_id}:{profile_id}",
                    run_kind="campaign",
                    run_id=campaign_id,
                    step_id=message_id,
                    profile_id=profile_id,
                    channel="email",
                    status=status,
                    reason=reason,
                )
            )


def test_report_counts_deliveries_per_message_and_path(api, db):
    c, vip, first = ready_campaign(api)
    second = message(api, c["id"], vip["id"], send_at=wall(2), channel="sms", content={"body": "x"})
    rest = path(api, c["id"], name="Rest")
    other = message(api, c["id"], rest["id"])
    _deliveries(db, c["id"], first["id"], [("sent", None)] * 3 + [("skipped", "no_consent")])
    _deliveries(
        db,
        c["id"],
        second["id"],
        [("sent", None), ("skipped", "exited"), ("skipped", "exited"), ("failed", "provider")],
    )
    _deliveries(db, "cmp_other", other["id"], [("sent", None)])  # another run: not counted
    db.execute("UPDATE campaign_message SET audience_size = 4 WHERE id = :id", id=first["id"])
    db.execute("UPDATE campaign_message SET audience_size = 3 WHERE id = :id", id=second["id"])
    report = api.get(f"/v1/campaigns/{c['id']}/report").json()
    assert (report["sent"], report["failed"], report["skipped"]) == (
        4,
        1,
        {"no_consent": 1, "exited": 2},
    )
    first_path, second_path = report["paths"]
    assert (first_path["path_id"], first_path["audience_size"]) == (vip["id"], 4)
    assert (first_path["sent"], first_path["skipped"], first_path["failed"]) == (
        4,
        {"no_consent": 1, "exited": 2},
        1,
    )
    lines = {m["message_id"]: m for m in first_path["messages"]}
    assert {k: lines[first["id"]][k] for k in ("sent", "skipped", "failed", "audience_size")} == {
        "sent": 3,
        "skipped": {"no_consent": 1},
        "failed": 0,
        "audience_size": 4,
    }
    assert lines[second["id"]]["skipped"] == {"exited": 2}
    assert (second_path["sent"], second_path["audience_size"]) == (0, None)
    assert second_path["messages"][0]["skipped"] == {}


def test_exits_list_converted_profiles_in_conversion_order(api, db):
    c = campaign(api, exit_metric="Placed Order")
    start = datetime(2026, 6, 1, 9, 15, tzinfo=UTC)
    with session_scope(db.engine) as session:
        for i, profile_id in enumerate(["prf_c", "prf_a", "prf_b"]):
            session.add(
                CampaignExit(
                    campaign_id=c["id"],
                    profile_id=profile_id,
                    event_id=i,
                    converted_at=start + timedelta(minutes=i // 2),
                )
            )
    first = api.get(f"/v1/campaigns/{c['id']}/exits", params={"limit": 2}).json()
    assert [e["profile_id"] for e in first["data"]] == ["prf_a", "prf_c"]
    rest = api.get(
        f"/v1/campaigns/{c['id']}/exits", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert ([e["profile_id"] for e in rest["data"]], rest["next_cursor"]) == (["prf_b"], None)
    assert rest["data"][0]["converted_at"].startswith("2026-06-01T09:16")
    assert api.get(f"/v1/campaigns/{c['id']}/report").json()["exits"] == 3
    bad = api.get(f"/v1/campaigns/{c['id']}/exits", params={"cursor": "bm9wZQ"})
    assert "cursor" in errors(bad)


# ---- against a real Temporal server ------------------------------------------------------------


async def test_scheduling_starts_the_campaign_workflow_and_unscheduling_cancels_it(
    temporal_server, db, keys
):
    client = temporal_server.client
    settings = Settings(
        database_url=db.url,
        temporal_address=client.service_client.config.target_host,
        api_key_cache_seconds=0,
        task_queue=f"campaigns-{uuid.uuid4().hex[:8]}",  # no worker polls it: nothing runs
    )
    with serve(create_app(settings, engine=db.engine)) as base_url:
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {keys.private}"}, timeout=30
        ) as api:
            customers = await _async_created(api.post("/v1/lists", json={"name": "Customers"}))
            ada = await _async_created(api.post("/v1/profiles", json={"email": "ada@example.com"}))
            await api.post(
                f"/v1/lists/{customers['id']}/members", json={"profile_ids": [ada["id"]]}
            )
            c = await _async_created(
                api.post("/v1/campaigns", json={"name": "Drop", "exit_metric": "Placed Order"})
            )
            p = await _async_created(
                api.post(
                    f"/v1/campaigns/{c['id']}/paths", json={"include_lists": [customers["id"]]}
                )
            )
            later = await _async_created(
                api.post(
                    f"/v1/campaigns/{c['id']}/paths/{p['id']}/messages",
                    json=email_body(send_at=wall(2, zone="UTC")),
                )
            )
            sooner = await _async_created(
                api.post(
                    f"/v1/campaigns/{c['id']}/paths/{p['id']}/messages",
                    json=email_body(send_at=wall(1, zone="UTC")),
                )
            )

            response = await api.post(f"/v1/campaigns/{c['id']}/schedule")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "scheduled"
            assert body["scheduled_at"] is not None
            assert {m["status"] for m in body["paths"][0]["messages"]} == {"scheduled"}

            handle = client.get_workflow_handle(f"campaign/{c['id']}")
            described = await handle.describe()
            assert described.workflow_type == "Campaign"
            assert described.status == WorkflowExecutionStatus.RUNNING
            assert described.task_queue == settings.task_queue
            assert described.typed_search_attributes.get(sa.KIND) == "campaign"
            assert described.typed_search_attributes.get(sa.CAMPAIGN_ID) == c["id"]
            started = await anext(aiter(handle.fetch_history_events()))
            [payload] = started.workflow_execution_started_event_attributes.input.payloads
            snapshot = temporal_server.client.data_converter.payload_converter.from_payload(
                payload, dict
            )
            assert snapshot["settings"]["path_order"] == [p["id"]]
            assert snapshot["settings"]["exit_metric"] == "Placed Order"
            assert [m["id"] for m in snapshot["paths"][0]["messages"]] == [
                sooner["id"],
                later["id"],
            ]

            locked = await api.patch(f"/v1/campaigns/{c['id']}", json={"exit_metric": None})
            assert locked.status_code == 423

            response = await api.post(f"/v1/campaigns/{c['id']}/unschedule")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "draft"
            assert db.rows("SELECT status FROM campaign_message") == [("draft",), ("draft",)]
            events = [e.event_type async for e in handle.fetch_history_events()]
            assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in events
            await handle.terminate(reason="test cleanup: no worker ran it")

            unlocked = await api.patch(f"/v1/campaigns/{c['id']}", json={"exit_metric": None})
            assert unlocked.status_code == 200
            again = await api.post(f"/v1/campaigns/{c['id']}/schedule")
            assert again.status_code == 200, again.text
            await client.get_workflow_handle(f"campaign/{c['id']}").terminate(reason="cleanup")


async def _async_created(request) -> dict:
    response = await request
    assert response.status_code == 201, response.text
    return response.json()
