"""`herald demo`: a short tour through the running API, the way a new user would try it.

Idempotent: it uses fixed identifiers and unique_ids, so running it again stores nothing twice.
"""

import subprocess
import time

import httpx

from herald.cli.devstack import find_binary


def _show(title: str, response: httpx.Response) -> dict:
    print(f"  {response.request.method} {response.request.url.path} -> {response.status_code}")
    if response.status_code >= 500:
        response.raise_for_status()
    print(f"    {title}")
    return response.json() if response.content else {}


THANK_YOU = {
    "name": "Thank you (demo)",
    "status": "live",
    "trigger": {"type": "metric", "metric": "Placed Order"},
    "reentry": {"mode": "every_time"},
    "steps": [
        {
            "id": "thank-you",
            "type": "message",
            "channel": "email",
            "content": {
                "subject": "Thanks for your order, {{ profile.first_name }}",
                "body": "Order {{ event.unique_id }}: {{ event.value }} received.",
            },
            "next": "wait-7-days",
        },
        {"id": "wait-7-days", "type": "time_delay", "amount": 7, "unit": "days", "next": "review"},
        {
            "id": "review",
            "type": "message",
            "channel": "email",
            "content": {"subject": "How is your order?", "body": "Tell us what you think."},
        },
    ],
}


BUYERS = {
    "name": "Big orders in 30 days (demo)",
    "definition": {
        "all_of": [
            {
                "any_of": [
                    {
                        "type": "metric",
                        "metric": "Placed Order",
                        "operator": "at_least",
                        "count": 1,
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
            {"any_of": [{"type": "consent", "channel": "email", "status": "subscribed"}]},
        ]
    },
}


def _demo_segment(admin: httpx.Client) -> None:
    """A segment over what the demo just sent: its members are computed when it is saved."""
    segments = admin.get("/v1/segments", params={"limit": 500}).json()["data"]
    segment = next((s for s in segments if s["name"] == BUYERS["name"]), None)
    if segment is None:
        segment = _show(
            "segment: ordered over 100 in 30 days", admin.post("/v1/segments", json=BUYERS)
        )
        admin.post(f"/v1/segments/{segment['id']}/status", json={"status": "live"})
    members = admin.get(f"/v1/segments/{segment['id']}/members").json()["data"]
    print(f"  segment {segment['name']!r}: {[m['email'] for m in members]}")


def run_demo(base: str, private_key: str, write_key: str, temporal_address: str) -> None:
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {private_key}"})
    ingest = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {write_key}"})
    print("\n== Herald demo ==")
    people = [
        {"email": "ada@example.com", "first_name": "Ada", "timezone": "Europe/Amsterdam"},
        {"email": "grace@example.com", "first_name": "Grace", "timezone": "America/New_York"},
        {"email": "ken@example.com", "first_name": "Ken", "timezone": "Asia/Tokyo"},
    ]
    ids = []
    for person in people:
        body = _show(f"profile {person['email']}", admin.post("/v1/profiles/upsert", json=person))
        ids.append(body["id"])
        _show(
            "email consent: subscribed",
            admin.put(f"/v1/profiles/{body['id']}/consent/email", json={"status": "subscribed"}),
        )
    lists = admin.get("/v1/lists", params={"limit": 500}).json()["data"]
    vip = next((x for x in lists if x["name"] == "VIP (demo)"), None)
    if vip is None:
        vip = _show("list VIP (demo)", admin.post("/v1/lists", json={"name": "VIP (demo)"}))
    _show(
        "added Ada and Grace to the list",
        admin.post(f"/v1/lists/{vip['id']}/members", json={"profile_ids": ids[:2]}),
    )
    flows = admin.get("/v1/flows", params={"limit": 200}).json()["data"]
    if not any(f["name"] == THANK_YOU["name"] for f in flows):
        _show("flow: thank-you email after every order", admin.post("/v1/flows", json=THANK_YOU))
    order = {
        "metric": "Placed Order",
        "profile": {"email": "ada@example.com"},
        "value": 129.95,
        "unique_id": "demo-order-1001",
        "properties": {"items": ["Runner X"]},
    }
    first = _show("Placed Order", ingest.post("/v1/events", json=order))
    again = _show("the same order again", ingest.post("/v1/events", json=order))
    print(f"    -> first: {first['status']}, second: {again['status']} (stored once)")
    batch = {
        "events": [
            {
                "metric": "Viewed Product",
                "profile": {"email": p["email"]},
                "unique_id": f"demo-view-{i}",
                "properties": {"product": "Runner X"},
            }
            for i, p in enumerate(people)
        ]
        + [{"metric": "Viewed Product", "profile": {"email": "not-an-email"}}]
    }
    report = _show("batch of 4 (one invalid)", ingest.post("/v1/events/batch", json=batch))
    print(
        f"    -> accepted {report['accepted']}, duplicates {report['duplicates']}, "
        f"rejected {report['rejected']}: {report['results'][-1].get('errors')}"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = admin.get("/v1/routing/status").json()
        if status["pending"] == 0:
            break
        time.sleep(0.5)
    print(f"  routing: {status['routed']} routed, {status['pending']} pending")
    messages = []
    while time.monotonic() < deadline and not messages:
        messages = admin.get("/v1/outbox", params={"profile_id": ids[0]}).json()["data"]
        time.sleep(0.3)
    for message in messages[:1]:
        print(f"  outbox -> {message['to']}: {message['subject']!r} / {message['body']!r}")
    profile = admin.get(f"/v1/profiles/{ids[0]}").json()
    print(f"  Ada's metrics (maintained by the router): {profile['metrics']}")
    _demo_segment(admin)
    for kind in ("router", "flow"):
        print(f"\n  temporal workflow list --query \"HeraldKind='{kind}'\":")
        listing = subprocess.run(
            [
                find_binary("temporal"),
                "workflow",
                "list",
                "--address",
                temporal_address,
                "--query",
                f"HeraldKind='{kind}'",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        print("    " + (listing.stdout or listing.stderr).strip().replace("\n", "\n    "))
    print("== demo done ==\n", flush=True)
