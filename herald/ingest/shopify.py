"""Shopify orders/create webhooks: signature check and order -> events translation."""

import base64
import hashlib
import hmac
from typing import Any

from models.events import EventIn


def signature_valid(secret: str, body: bytes, presented: str | None) -> bool:
    """Shopify signs the raw body: base64(HMAC-SHA256(secret, body)), constant-time compared."""
    if not secret or not presented:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, presented.strip())


def _money(value: Any) -> float | None:
    try:
        return round(float(value), 2)
    except (TypeError, ValueError):
        return None


def order_to_events(order: dict[str, Any]) -> list[EventIn]:
    """Placed Order (unique_id = order id) plus one Ordered Product per line item.

    The profile is found by email, then phone: a shop's customer id is kept as a property rather
    than as external_id, which belongs to the business's own user ids.
    """
    if not isinstance(order, dict) or order.get("id") in (None, ""):
        raise ValueError("id: the order has no id")
    order_id = str(order["id"])
    customer = order.get("customer") or {}
    email = order.get("email") or order.get("contact_email") or customer.get("email")
    phone = order.get("phone") or customer.get("phone")
    if not email and not phone:
        raise ValueError("customer: the order has neither an email nor a phone")
    profile: dict[str, Any] = {"email": email or None, "phone": phone or None}
    if customer.get("first_name"):
        profile["first_name"] = customer["first_name"]
    if customer.get("last_name"):
        profile["last_name"] = customer["last_name"]
    if customer.get("id") is not None:
        profile["properties"] = {"shopify_customer_id": str(customer["id"])}
    when = order.get("created_at") or order.get("processed_at")
    items = order.get("line_items") or []
    value = _money(order.get("total_price"))
    placed = EventIn.model_validate(
        {
            "metric": "Placed Order",
            "profile": profile,
            "time": when,
            "unique_id": order_id,
            "value": value,
            "properties": {
                "$value": value,
                "order_id": order_id,
                "order_number": order.get("order_number") or order.get("name"),
                "currency": order.get("currency"),
                "item_count": sum(int(i.get("quantity") or 0) for i in items),
                "item_names": [i.get("title") for i in items if i.get("title")],
                "discount_codes": [
                    d.get("code") for d in order.get("discount_codes") or [] if d.get("code")
                ],
                "source": "shopify",
            },
        }
    )
    events = [placed]
    for item in items:
        price = _money(item.get("price")) or 0.0
        quantity = int(item.get("quantity") or 1)
        line_value = round(price * quantity, 2)
        events.append(
            EventIn.model_validate(
                {
                    "metric": "Ordered Product",
                    "profile": profile,
                    "time": when,
                    "unique_id": f"{order_id}:{item.get('id')}",
                    "value": line_value,
                    "properties": {
                        "$value": line_value,
                        "order_id": order_id,
                        "product_id": item.get("product_id"),
                        "variant_id": item.get("variant_id"),
                        "sku": item.get("sku"),
                        "name": item.get("title"),
                        "quantity": quantity,
                        "price": price,
                    },
                }
            )
        )
    return events
