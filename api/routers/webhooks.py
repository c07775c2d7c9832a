"""Signed webhooks from event sources (no API key: the signature is the credential)."""

import json

from fastapi import APIRouter, Header, Request, status
from pydantic import ValidationError

from api.deps import EngineDep, SettingsDep
from api.errors import ApiError, field_errors
from herald.ingest.shopify import order_to_events, signature_valid

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post(
    "/shopify/orders-create",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Shopify orders/create: records Placed Order and Ordered Product events",
)
async def shopify_orders_create(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    x_shopify_hmac_sha256: str | None = Header(default=None),
) -> dict:
    if not settings.shopify_webhook_secret:
        raise ApiError(
            403, "webhook_disabled", "Shopify webhooks are off: set HERALD_SHOPIFY_WEBHOOK_SECRET"
        )
    body = await request.body()
    if not signature_valid(settings.shopify_webhook_secret, body, x_shopify_hmac_sha256):
        raise ApiError(
            401,
            "invalid_signature",
            "X-Shopify-Hmac-Sha256 is missing or does not match the body",
            [{"field": "X-Shopify-Hmac-Sha256", "reason": "signature mismatch"}],
        )
    try:
        order = json.loads(body)
    except ValueError:
        raise ApiError(
            400, "invalid_json", "the body is not JSON", [{"field": "body", "reason": "not JSON"}]
        ) from None
    try:
        events = order_to_events(order)
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "the order cannot be recorded", field_errors(exc)
        ) from None
    except ValueError as exc:
        field, _, reason = str(exc).partition(": ")
        raise ApiError(
            422, "validation_error", str(exc), [{"field": field, "reason": reason or str(exc)}]
        ) from None
    results = await request.app.state.ingest.submit(events, "shopify")
    placed = results[0]
    return {
        "status": "duplicate" if placed.duplicate else "accepted",
        "profile_id": placed.profile_id,
        "placed_order_event_id": placed.event_id,
        "ordered_product_events": len(results) - 1,
    }
