"""Closed vocabularies shared by tables, DTOs and workflows."""

from enum import StrEnum


class Channel(StrEnum):
    email = "email"
    sms = "sms"
    whatsapp = "whatsapp"
    push = "push"


class ConsentStatus(StrEnum):
    subscribed = "subscribed"
    unsubscribed = "unsubscribed"
    never_subscribed = "never_subscribed"


class ApiKeyKind(StrEnum):
    # Private keys manage everything; write keys may only send events and identify profiles.
    private = "private"
    write = "write"


class OutboxKind(StrEnum):
    event = "event"
    list_added = "list_added"
    # Profile fields, properties, consent or list removals changed: segments re-check the profile.
    profile_changed = "profile_changed"
    # Membership changes of a segment ("added to segment" triggers flows).
    segment_added = "segment_added"
    segment_removed = "segment_removed"
