"""Shopify orders/create webhook: verified by HMAC, recorded as Placed Order + Ordered Product."""

import base64
import hashlib
import hmac
import json

from tests.conftest import SHOPIFY_SECRET

PATH = "/v1/webhooks/shopify/orders-create"
ORDER = {
    "id": 820982911946154508,
    "order_number": 1001,
    "email": "Jon@Example.com",
    "created_at": "2026-03-01T10:15:00-05:00",
    "total_price": "254.98",
    "currency": "EUR",
    "customer": {"id": 115310627314723954, "first_name": "Jon", "last_name": "Snow"},
    "line_items": [
        {"id": 1, "product_id": 77, "title": "Runner X", "quantity": 2, "price": "99.99"},
        {"id": 2, "product_id": 78, "title": "Socks", "quantity": 1, "price": "55.00"},
    ],
}


def signed(body: bytes, secret: str = SHOPIFY_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Topic": "orders/create",
        "Content-Type": "application/json",
    }


def test_order_becomes_placed_order_and_ordered_products(anonymous, api, db):
    body = json.dumps(ORDER).encode()
    response = anonymous.post(PATH, content=body, headers=signed(body))
    assert response.status_code == 202, response.text
    assert response.json()["ordered_product_events"] == 2

    [profile] = api.get("/v1/profiles", params={"email": "jon@example.com"}).json()["data"]
    assert profile["first_name"] == "Jon"
    assert profile["properties"]["shopify_customer_id"] == "115310627314723954"
    events = api.get("/v1/events", params={"profile_id": profile["id"]}).json()["data"]
    placed = next(e for e in events if e["metric"] == "Placed Order")
    assert placed["unique_id"] == "820982911946154508"
    assert placed["value"] == 254.98 and placed["properties"]["$value"] == 254.98
    assert placed["time"] == "2026-03-01T15:15:00Z"
    products = sorted(
        (e["unique_id"], e["value"]) for e in events if e["metric"] == "Ordered Product"
    )
    assert products == [("820982911946154508:1", 199.98), ("820982911946154508:2", 55.0)]


def test_redelivered_webhook_is_stored_once(anonymous, db):
    body = json.dumps(ORDER).encode()
    anonymous.post(PATH, content=body, headers=signed(body))
    again = anonymous.post(PATH, content=body, headers=signed(body))
    assert again.status_code == 202 and again.json()["status"] == "duplicate"
    assert db.scalar("SELECT count(*) FROM event") == 3


def test_bad_or_missing_signature_is_refused_and_stores_nothing(anonymous, db):
    body = json.dumps(ORDER).encode()
    wrong = anonymous.post(PATH, content=body, headers=signed(body, "another-secret"))
    assert wrong.status_code == 401
    assert wrong.json()["errors"][0]["field"] == "X-Shopify-Hmac-Sha256"
    tampered = anonymous.post(PATH, content=body.replace(b"254.98", b"2.98"), headers=signed(body))
    assert tampered.status_code == 401
    missing = anonymous.post(PATH, content=body, headers={"Content-Type": "application/json"})
    assert missing.status_code == 401
    assert db.scalar("SELECT count(*) FROM event") == 0


def test_order_without_any_contact_is_a_422(anonymous, db):
    body = json.dumps({**ORDER, "email": None, "customer": {}}).encode()
    response = anonymous.post(PATH, content=body, headers=signed(body))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "customer"
    assert db.scalar("SELECT count(*) FROM profile") == 0
