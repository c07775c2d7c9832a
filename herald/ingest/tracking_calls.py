"""Translating Segment-spec messages (identify / track) into Herald's own inputs.

Lets existing Segment and RudderStack SDKs send to Herald unchanged: userId is our external_id,
anonymousId our anonymous_id, messageId the event's unique_id.
"""

from typing import Any

from models.events import EventIn
from models.profile import ProfileCreate

# Segment's reserved traits that map onto profile fields; every other trait is a property.
_TRAIT_FIELDS = {
    "email": "email",
    "phone": "phone",
    "firstName": "first_name",
    "first_name": "first_name",
    "lastName": "last_name",
    "last_name": "last_name",
    "timezone": "timezone",
}


def _identity(message: dict[str, Any], traits: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if message.get("userId") not in (None, ""):
        out["external_id"] = str(message["userId"])
    if message.get("anonymousId") not in (None, ""):
        out["anonymous_id"] = str(message["anonymousId"])
    for trait, field in _TRAIT_FIELDS.items():
        value = traits.get(trait)
        if value not in (None, "") and field not in out:
            out[field] = value
    return out


def _require_user(message: dict[str, Any]) -> None:
    if message.get("userId") in (None, "") and message.get("anonymousId") in (None, ""):
        raise ValueError("userId or anonymousId is required")


def identify_to_profile(message: dict[str, Any]) -> ProfileCreate:
    _require_user(message)
    traits = message.get("traits") or {}
    if not isinstance(traits, dict):
        raise ValueError("traits must be an object")
    context = message.get("context") or {}
    fields = _identity(message, traits)
    if "timezone" not in fields and isinstance(context, dict) and context.get("timezone"):
        fields["timezone"] = context["timezone"]
    properties = {k: v for k, v in traits.items() if k not in _TRAIT_FIELDS}
    return ProfileCreate.model_validate({**fields, "properties": properties or None})


def track_to_event(message: dict[str, Any]) -> EventIn:
    _require_user(message)
    context = message.get("context") or {}
    traits = context.get("traits") if isinstance(context, dict) else None
    profile = _identity(message, traits if isinstance(traits, dict) else {})
    properties = message.get("properties") or {}
    if not isinstance(properties, dict):
        raise ValueError("properties must be an object")
    value = None
    for key in ("$value", "value", "revenue", "total"):
        candidate = properties.get(key)
        if isinstance(candidate, int | float) and not isinstance(candidate, bool):
            value = float(candidate)
            break
    return EventIn.model_validate(
        {
            "metric": message.get("event"),
            "profile": profile,
            "properties": properties,
            "value": value,
            "time": message.get("timestamp") or message.get("originalTimestamp"),
            "unique_id": message.get("messageId"),
        }
    )
